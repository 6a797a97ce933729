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
    """A model trained with the default recipe on the demo's three 1448² generated tiles with
    40 % of their objects labelled (about five minutes on 2 cores, once per session), shared by
    the infer and scale-out tests. Shorter runs find objects but are not yet
    rotation-consistent for vehicles, which the rotated-scene test checks."""
    from geodetect.config import load_config
    from geodetect.data import make_training_set
    from geodetect.demo import FULL
    from geodetect.training import train

    root = tmp_path_factory.mktemp("trained_model")
    scenes, labels = make_training_set(
        root / "data", seeds=FULL["train_seeds"], size=FULL["size"], cloud=False
    )
    config = load_config(None, {"infer.tile": 256, "infer.overlap": 112})
    images = [str(d.image) for d in scenes]
    return train(images, str(labels), None, config, root / "run", device="cpu")
