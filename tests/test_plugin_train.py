"""Training and detection from the dock: background worker, progress, cancel, review loop."""

from __future__ import annotations

import shutil
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from geodetect.plugin import _label_layer as ll

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer, sample_small, tmp_path: Path):
    from geodetect.plugin._widgets import GeodetectWidget

    image = Path(shutil.copy(sample_small.image, tmp_path / "scene.tif"))
    labels = Path(shutil.copy(sample_small.labels, tmp_path / "scene_labels.gpkg"))
    viewer = make_napari_viewer()
    viewer.open(str(image), plugin="geodetect")
    widget = GeodetectWidget(viewer)
    assert widget.load_labels(labels)
    return widget


def _fake_train_module(steps: int | None, calls: list) -> types.ModuleType:
    """A stand-in for geodetect.train with the agreed signature and a progress callback."""

    def train(
        images, labels, pointclouds, config, out_dir, device, seed, resume, progress, callback=None
    ):
        calls.append({"images": images, "labels": labels, "thread": threading.current_thread()})
        k = 0
        while steps is None or k < steps:
            k += 1
            if callback is not None:
                callback(
                    {
                        "epoch": 1,
                        "epochs": 1,
                        "step": k,
                        "total_steps": steps or 10**6,
                        "loss": 1.0 / k,
                    }
                )
            time.sleep(0.005)
        out = Path(out_dir) / "model.pt"
        out.write_bytes(b"model")
        return out

    mod = types.ModuleType("geodetect.train")
    mod.train = train
    return mod


def test_training_runs_in_a_worker_with_progress(dock, qtbot, monkeypatch, tmp_path) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "geodetect.train", _fake_train_module(20, calls))
    worker = dock.start_training(tmp_path / "run")
    assert worker is not None and not dock.train_button.isEnabled()
    qtbot.waitUntil(lambda: dock.train_worker is None, timeout=10_000)
    assert dock.model_path == tmp_path / "run" / "model.pt" and dock.model_path.is_file()
    assert dock.model_edit.text() == str(dock.model_path)
    assert calls[0]["thread"] is not threading.main_thread()  # the UI thread stayed free
    assert Path(calls[0]["labels"]).is_file() and calls[0]["images"][0].endswith("scene.tif")
    assert "loss 0.0500" in dock.loss_label.text()
    assert dock.train_progress.value() == dock.train_progress.maximum()
    assert dock.train_button.isEnabled()


def test_cancel_stops_training(dock, qtbot, monkeypatch, tmp_path) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "geodetect.train", _fake_train_module(None, calls))
    dock.start_training(tmp_path / "run")
    qtbot.waitUntil(lambda: bool(dock._train_state), timeout=5000)
    dock.cancel_training()
    qtbot.waitUntil(lambda: dock.train_worker is None, timeout=5000)
    assert dock.model_path is None and not (tmp_path / "run" / "model.pt").exists()
    assert "cancelled" in dock.message.text()


@pytest.mark.slow
def test_real_training_then_detection_and_review(dock, qtbot, tmp_path) -> None:
    """A tiny real run (1 epoch) from the widget, then detections to accept/reject."""
    from geodetect.config import load_config

    config = load_config(
        None,
        {
            "train.epochs": 1,
            "train.chips_per_epoch": 16,
            "train.batch_size": 4,
            "data.chip_size": 64,
            "model.width": 8,
        },
    )
    dock.start_training(tmp_path / "run", config=config)
    qtbot.waitUntil(lambda: dock.train_worker is None, timeout=170_000)
    assert dock.last_error is None, dock.last_error
    assert dock.model_path is not None and dock.model_path.is_file()
    dock.threshold.setValue(0.0)
    dock.run_detection(region=False)
    qtbot.waitUntil(lambda: dock.detect_worker is None, timeout=60_000)
    assert dock.last_error is None, dock.last_error
    det = dock.layer(ll.DETECTIONS)
    assert det is not None and len(det.data) > 0
    before = sum(dock.label_counts()["positives"].values())
    det.selected_data = {0}
    assert dock.accept_selected() == 1
    assert sum(dock.label_counts()["positives"].values()) == before + 1
