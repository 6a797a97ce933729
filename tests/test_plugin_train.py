"""Train and detect from the dock: child processes, one-line errors, the visible region."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from geodetect.plugin import _coords as co

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer, sample_small, tmp_path: Path):
    from geodetect.plugin._dock import GeodetectWidget

    image = Path(shutil.copy(sample_small.image, tmp_path / "scene.tif"))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(image), plugin="geodetect")
    widget = GeodetectWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def test_train_with_nothing_labelled_is_a_message(dock, qtbot, tmp_path: Path) -> None:
    """Issue 12.3: the LabelError of an empty label set aborted napari (SIGABRT)."""
    job = dock.start_training(tmp_path / "run")
    assert job is not None and job.pid and not dock.train_tab.train_button.isEnabled()
    qtbot.waitUntil(lambda: not dock.busy, timeout=120_000)
    assert dock.last_error and "\n" not in dock.last_error
    assert dock.message.text().startswith("⚠ train failed:")
    assert dock.train_tab.train_button.isEnabled()


def test_visible_region_uses_public_api(dock, qtbot) -> None:
    """Issue 12.4: Detect in view read the private `viewer._canvas_size` (gone in 0.9)."""
    from affine import Affine

    dock.ensure_label_layers()
    meta = dock.viewer.layers["scene"].metadata[co.KEY]
    t, (h, w) = Affine(*meta["transform"]), meta["shape"]
    # look at the top-left quarter of the scene
    centre = co.map_to_world(co.pixel_to_map(np.array([[w / 4, h / 4]]), t), True)[0]
    dock.viewer.camera.center = tuple(centre)
    dock.viewer.camera.zoom = dock.viewer.camera.zoom * 4
    qtbot.wait(300)  # the canvas draws, which updates the layers' corner_pixels
    region = dock.visible_region()
    left, bottom, right, top = region["bounds"]
    x0, y0 = t * (0, 0)
    x1, y1 = t * (w, h)
    assert x0 <= left < right <= x1 and y1 <= bottom < top <= y0
    assert (right - left) < 0.75 * (x1 - x0)  # only part of the scene
    assert region["crs"] == meta["crs"]


def test_train_progress_counts_an_ensembles_members(dock) -> None:
    """model.members: one bar over all members' steps, and which member is training."""
    tab = dock.train_tab
    tab.show_progress({"epoch": 3, "epochs": 5, "step": 130, "total_steps": 200, "loss": 0.5,
                       "member": 2, "members": 2})  # fmt: skip
    assert tab.progress.maximum() == 200 and tab.progress.value() == 130
    assert tab.loss.text().startswith("member 2/2  epoch 3/5")
    tab.show_progress({"epoch": 1, "epochs": 5, "step": 10, "total_steps": 100, "loss": 0.5})
    assert tab.loss.text().startswith("epoch 1/5")
