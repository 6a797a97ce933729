"""The dock driven by real Qt mouse and key events (xvfb): tools, keys, autosave, samples."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from napari_events import Canvas
from shapely.geometry import Polygon

from geodetect.plugin import _coords as co
from geodetect.plugin import _label_layer as ll

pytestmark = pytest.mark.gui


@pytest.fixture
def scene(sample_small, tmp_path: Path) -> Path:
    return Path(shutil.copy(sample_small.image, tmp_path / "scene.tif"))


def _dock(make_napari_viewer, *paths):
    from geodetect.plugin._dock import GeodetectWidget

    viewer = make_napari_viewer(show=True)
    for p in paths:
        viewer.open(str(p), plugin="geodetect")
    dock = GeodetectWidget(viewer)
    viewer.window.add_dock_widget(dock)
    viewer.window._qt_window.resize(1250, 950)  # noqa: SLF001 - a usable canvas under xvfb
    viewer.reset_view()
    return dock, Canvas(viewer)


def _world(dock, px):
    meta = dock.viewer.layers["scene"].metadata[co.KEY]
    t = Affine(*meta["transform"])
    return co.map_to_world(co.pixel_to_map(np.asarray(px, float), t), True)


def test_one_active_tool_no_stray_negatives(make_napari_viewer, scene, qtbot) -> None:
    """Issue 12.5: after a negative, positive drags grew a stray negative polygon and the
    autosave failed ('A linearring requires at least 4 coordinates')."""
    dock, canvas = _dock(make_napari_viewer, scene)
    dock.label_tab.tool_buttons["negative"].click()
    canvas.polygon(_world(dock, [[300, 300], [400, 300], [400, 400], [300, 400]]))
    qtbot.wait(50)
    neg = dock.layer(ll.NEGATIVES)
    assert len(neg.data) == 1 and len(neg.data[0]) == 4
    dock.label_tab.tool_buttons["positive"].click()
    assert neg.mode == "pan_zoom"
    b, f = _world(dock, [[100, 100], [100, 60]])
    canvas.drag(b, f)
    canvas.drag(*_world(dock, [[150, 100], [190, 100]]))
    qtbot.wait(50)
    assert len(neg.data) == 1 and len(neg.data[0]) == 4
    assert dock.label_counts() == {"positives": {"vehicle": 2}, "negatives": 1}
    side = dock.autosave()
    assert side is not None and dock.autosave_error is None
    gdf = gpd.read_file(side)
    assert sorted(gdf["label"]) == ["negative", "positive", "positive"]
    heads = sorted(gdf["heading_deg"].dropna())
    assert heads == pytest.approx([0.0, 90.0], abs=2.0)  # north, then east


def test_keys_on_the_canvas_edit_and_undo(make_napari_viewer, scene, qtbot) -> None:
    """Select by clicking, then r / f and Ctrl-Z / Ctrl-Shift-Z, as key events on the canvas."""
    dock, canvas = _dock(make_napari_viewer, scene)
    dock.label_tab.tool_buttons["positive"].click()
    for y in (100, 200, 300):
        canvas.drag(*_world(dock, [[100, y], [100, y - 40]]))
    assert len(dock.layer(ll.POSITIVES).data) == 3
    dock.label_tab.tool_buttons["edit"].click()
    canvas.click(_world(dock, [[100, 180]])[0])
    assert dock.layer(ll.POSITIVES).selected_data == {1}
    canvas.key("r")
    canvas.key("f")
    assert dock.model.state.positives.features["heading_deg"][1] == pytest.approx(185.0, abs=1.0)
    for _ in range(3):  # Ctrl-Z three times: flip, rotate, the third drag
        canvas.key("z", ctrl=True)
    assert len(dock.layer(ll.POSITIVES).data) == 2
    canvas.key("z", ctrl=True, shift=True)  # redo the drag
    assert len(dock.layer(ll.POSITIVES).data) == 3


def test_dems_are_not_scenes(make_napari_viewer, sample_small, tmp_path) -> None:
    """Issue 12.9: labelling on the DSM gave labels without an image, autosaved beside the
    .laz, and training failed 'cloud.laz: not a raster'."""
    cloud = Path(shutil.copy(sample_small.cloud, tmp_path / "lidar.laz"))
    dock, _ = _dock(make_napari_viewer, cloud)
    assert dock.label_tab.scene_box.count() == 0
    assert not dock.ensure_label_layers()
    assert "scene raster" in dock.last_error
    assert ll.POSITIVES not in dock.viewer.layers
    assert not list(tmp_path.glob("*autosave*"))


def test_autosave_state_and_load_asks(make_napari_viewer, scene, sample_small, qtbot) -> None:
    """Issue 12.10: an autosave waiting and a failing autosave were silent; Load… replaced
    drawn labels without asking."""
    from geodetect.plugin._model import autosave_path

    side = autosave_path(scene)
    shutil.copy(sample_small.labels, side)
    dock, canvas = _dock(make_napari_viewer, scene)
    assert "autosave from" in dock.label_tab.autosave_status.text()
    assert dock.ensure_label_layers()  # restores it
    n = sum(dock.label_counts()["positives"].values())
    assert n > 0 and "restored" in dock.message.text()
    asked = []
    dock.confirm = lambda q: asked.append(q) or False
    assert not dock.load_labels(sample_small.labels)
    assert asked and sum(dock.label_counts()["positives"].values()) == n
    side.unlink()
    side.mkdir()  # now the sidecar cannot be written
    dock.add_positive(*_world(dock, [[50.0, 50.0], [50.0, 30.0]]))
    qtbot.waitUntil(lambda: dock.autosave_error is not None, timeout=5000)
    assert "autosave failed" in dock.label_tab.autosave_status.text()


def test_samples_run_beside_the_scene(make_napari_viewer, scene, sample_small, qtbot) -> None:
    """Issue 12.11: Samples froze the GUI ~20 s, the gallery landed far from the scene and
    showed positives only."""
    dock, _ = _dock(make_napari_viewer, scene)
    assert dock.load_labels(sample_small.labels, ask=False)
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    job = dock.show_samples()
    assert job is not None
    qtbot.waitUntil(lambda: not dock.busy, timeout=120_000)
    timer.stop()
    assert dock.last_error is None, dock.last_error
    gallery = next(ly for ly in dock.viewer.layers if ly.name.startswith("samples"))
    assert "shown" in gallery.name and " + 0" not in gallery.name  # negatives shown too
    scene_layer = dock.viewer.layers["scene"]
    right = scene_layer.translate[1] + scene_layer.data.shape[1] * scene_layer.scale[1]
    assert right < gallery.translate[1] < right + 0.2 * (right - scene_layer.translate[1])
    assert abs(gallery.translate[0] - scene_layer.translate[0]) < 1.0
    gaps = np.diff(ticks)
    print(f"samples: longest GUI gap {gaps.max():.3f} s over {len(ticks)} ticks; {gaps[-5:]}")
    assert gaps.max() < 1.0  # the GUI kept running (2 shared cores: a loose bound)


def test_samples_can_be_cancelled(make_napari_viewer, scene, sample_small, qtbot) -> None:
    """Samples ran with neither Cancel button enabled: the Label tab's Cancel kills it."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    dock, _ = _dock(make_napari_viewer, scene)
    assert dock.load_labels(sample_small.labels, ask=False)
    tab = dock.label_tab
    assert not tab.cancel_button.isEnabled()
    job = dock.show_samples()
    assert job is not None and job.kind == "samples"
    assert tab.cancel_button.isEnabled() and not tab.samples_button.isEnabled()
    QTest.mouseClick(tab.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dock.busy, timeout=30_000)
    assert job.error == "samples cancelled" and job.result is None
    assert job._proc.poll() is not None  # noqa: SLF001 - the child is gone
    assert dock.message.text() == "samples cancelled" and dock.last_error is None
    assert not [ly for ly in dock.viewer.layers if ly.name.startswith("samples")]
    assert tab.samples_button.isEnabled() and not tab.cancel_button.isEnabled()


def test_accept_reject_keys_on_a_thousand_detections(make_napari_viewer, scene, qtbot) -> None:
    """Issue 12.13: each a / x took ~1.3 s with 1,300 detections on screen."""
    dock, canvas = _dock(make_napari_viewer, scene)
    meta = dock.viewer.layers["scene"].metadata[co.KEY]
    t = Affine(*meta["transform"])
    rng = np.random.default_rng(0)
    xy = co.pixel_to_map(rng.uniform(10, 500, (1000, 2)), t)

    def rect(cx, cy):
        a = math.radians(30)
        f, r = np.array([math.sin(a), math.cos(a)]), np.array([math.cos(a), -math.sin(a)])
        c = np.array([cx, cy])
        return Polygon(
            [
                c + f * 2.3 - r * 0.95,
                c + f * 2.3 + r * 0.95,
                c - f * 2.3 + r * 0.95,
                c - f * 2.3 - r * 0.95,
            ]
        )

    gdf = gpd.GeoDataFrame(
        {
            "class": ["vehicle"] * 1000,
            "score": rng.uniform(0, 1, 1000),
            "heading_deg": [30.0] * 1000,
        },
        geometry=[rect(x, y) for x, y in xy],
        crs="EPSG:32633",
    )
    from qtpy.QtCore import QTimer

    assert dock.ensure_label_layers()
    qtbot.wait(500)  # the new layers' first draw
    det = dock.layer(ll.DETECTIONS)
    ticks: list[tuple[float, bool]] = []
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: ticks.append((time.perf_counter(), det.visible)))
    heartbeat.start(20)
    t0 = time.perf_counter()
    dock.show_detections(gdf)
    assert dock.busy and not det.visible  # filled hidden: no repaint of every shape per chunk
    qtbot.waitUntil(lambda: not dock.busy, timeout=60_000)
    shown_s = time.perf_counter() - t0
    heartbeat.stop()
    assert det.visible and len(det.data) == 1000
    assert det.mode == "select"  # review: napari restored its pre-hide mode, the dock its own
    gaps = np.diff([t for t, _ in ticks])
    print(f"show 1,000: {shown_s:.2f} s, longest GUI gap {gaps.max():.3f} s,", (gaps > 0.2).sum())
    actions: list[str] = []
    det.events.data.connect(lambda e: actions.append(e.action))
    times = []
    for k in range(6):
        det.selected_data = {k * 11}
        t0 = time.perf_counter()
        canvas.key("a" if k % 2 == 0 else "x")
        times.append(time.perf_counter() - t0)
    # one shape removed per key; the old dock rebuilt the whole layer (remove all, add all)
    assert set(actions) == {"removing", "removed"} and actions.count("removed") == 6
    assert len(det.data) == 994
    assert dock.label_counts() == {"positives": {"vehicle": 3}, "negatives": 3}
    print("accept/reject per key (s):", [round(x, 3) for x in times])
    # measured on the shared 2 cores: median 0.12 s per key at load 3.5, 0.22-0.43 s at load
    # 10-15; the bound is ~2x the loaded figure
    assert np.median(times) < 0.9
    assert dock.undo()
    qtbot.waitUntil(lambda: not dock.busy, timeout=60_000)
    assert len(det.data) == 995
    det.visible = False  # the user hid the layer: a refill leaves it hidden
    dock.show_detections(gdf)
    qtbot.waitUntil(lambda: not dock.busy, timeout=60_000)
    assert len(det.data) == 1000 and not det.visible
