"""Shared fixtures: small generated data, made once per session."""

from __future__ import annotations

import os

import pytest

# Two cores in CI: never oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_small(tmp_path_factory: pytest.TempPathFactory):
    """A 384² generated scene with cloud, truth and sparse labels."""
    from geodetect.data import make_sample_data

    return make_sample_data(tmp_path_factory.mktemp("sample_small"), size=384, seed=1)
