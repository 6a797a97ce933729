"""Shared fixtures: small generated data, made once per session."""

from __future__ import annotations

import os

import pytest

# Two cores in CI: never oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_small(tmp_path_factory: pytest.TempPathFactory):
    """A 512² generated scene with cloud, truth and sparse labels (60 %: at least two labelled
    objects of each class, so it trains)."""
    from geodetect.data import make_sample_data

    return make_sample_data(
        tmp_path_factory.mktemp("sample_small"), size=512, seed=11, label_fraction=0.6
    )


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item: napari's make_napari_viewer fixture reads
    `item.rep_call` to decide whether to check for leaked viewers after a test.

    napari's pytest plugin registers the same hook; this copy makes the dependency explicit
    and setting the attribute twice is harmless.
    """
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A model trained with the default recipe on a 2048² generated scene with 40 % of its
    objects labelled (about five minutes on 2 cores, once per session), shared by the infer
    and scale-out tests. Shorter runs find objects but are not yet rotation-consistent for
    vehicles, which the rotated-scene test checks."""
    from geodetect.config import load_config
    from geodetect.data import make_sample_data
    from geodetect.train import train

    root = tmp_path_factory.mktemp("trained_model")
    data = make_sample_data(root / "data", size=2048, seed=0, cloud=False, name="train")
    config = load_config(None, {"infer.tile": 256, "infer.overlap": 112})
    return train([str(data.image)], str(data.labels), None, config, root / "run", device="cpu")
