"""The whole labelling loop in napari with real events and the real train / detect code:
open scene + cloud -> draw positives and a negative -> train (tiny) -> detect in scene and in
view -> accept / reject -> retrain -> detect again. The labels file is checked after each step.

Screenshots of the three tabs go to $GEODETECT_SHOTS (docs/images for the docs) when set.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from napari_events import Canvas
from qtpy.QtCore import Qt, QTimer
from qtpy.QtTest import QTest

from geodetect.plugin import _coords as co
from geodetect.plugin import _label_layer as ll
from geodetect.plugin._dock import AUTOSAVE_DELAY_MS
from geodetect.plugin._model import autosave_path

pytestmark = pytest.mark.gui

TINY_YAML = """
train: {epochs: 1, chips_per_epoch: 16, batch_size: 4}
data: {chip_size: 64}
model: {width: 8}
"""


def _box(poly) -> tuple[np.ndarray, float, float, float]:
    """Centre, long-axis unit vector (map), length and width of a rectangle polygon."""
    c = np.asarray(poly.exterior.coords)[:4]
    e1, e2 = c[1] - c[0], c[2] - c[1]
    (a, la), (b, lb) = sorted([(e1, np.hypot(*e1)), (e2, np.hypot(*e2))], key=lambda t: -t[1])
    return c.mean(axis=0), a / la, la, lb


def _click_button(button) -> None:
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def _labels(path: Path) -> dict:
    gdf = gpd.read_file(path)
    return {
        "positive": int((gdf["label"] == "positive").sum()),
        "negative": int((gdf["label"] == "negative").sum()),
    }


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def _box_polygon(f) -> shapely.Polygon:
    """The rectangle of a feature row (map frame: length along `angle`, clockwise from
    north), written out independently of the plugin's converters."""
    t = math.radians(f["angle"])
    a = np.array([math.sin(t), math.cos(t)]) * f["length"] / 2
    r = np.array([math.cos(t), -math.sin(t)]) * f["width"] / 2
    c = np.array([f["cx"], f["cy"]])
    return shapely.Polygon([c + a - r, c + a + r, c - a + r, c - a - r])


def _no_duplicates(path: Path) -> None:
    """No two positives in the file are one object (rotated IoU >= 0.5)."""
    pos = gpd.read_file(path)
    pos = list(pos[pos["label"] == "positive"].geometry)
    for i, a in enumerate(pos):
        for b in pos[i + 1 :]:
            assert _iou(a, b) < 0.5, "an accepted detection was duplicated, not merged"


def test_label_train_detect_review_loop(make_napari_viewer, sample_small, tmp_path, qtbot) -> None:
    from geodetect.plugin._dock import GeodetectWidget

    torch_before = "torch" in sys.modules
    image = Path(shutil.copy(sample_small.image, tmp_path / "scene.tif"))
    cloud = Path(shutil.copy(sample_small.cloud, tmp_path / "lidar.laz"))
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    shots = Path(os.environ.get("GEODETECT_SHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1250, 950)  # noqa: SLF001 - a usable canvas under xvfb
    viewer.open(str(image), plugin="geodetect")
    viewer.open(str(cloud), plugin="geodetect")
    dock = GeodetectWidget(viewer)
    viewer.window.add_dock_widget(dock, name="geodetect")
    viewer.reset_view()
    qtbot.wait(100)
    canvas = Canvas(viewer)
    side = autosave_path(image)
    ticks: list[tuple[float, int]] = []  # (time, which job) while a job or layer fill runs
    heartbeat = QTimer()
    heartbeat.timeout.connect(
        lambda: dock.busy and ticks.append((time.perf_counter(), id(dock.job)))
    )
    heartbeat.start(20)

    def wait_job(timeout_s: float = 240) -> None:
        qtbot.waitUntil(lambda: not dock.busy, timeout=int(timeout_s * 1000))
        assert dock.last_error is None, dock.last_error

    def world(xy):
        return co.map_to_world(np.asarray(xy, float).reshape(-1, 2), True)

    def saved(expected: dict) -> None:
        """The autosave file holds exactly `expected` once the autosave delay has passed."""
        qtbot.wait(AUTOSAVE_DELAY_MS + 300)
        qtbot.waitUntil(lambda: not dock._autosave.isActive(), timeout=5000)  # noqa: SLF001
        assert dock.autosave_error is None, dock.autosave_error
        assert _labels(side) == expected
        _no_duplicates(side)

    def accept_best() -> tuple[int, str]:
        """`a` on the detection that best overlaps a positive in the file: the file then
        holds the positives `accept_expected` says (merged when IoU >= 0.5, else added)."""
        feats = dock.model.state.detections.features
        gdf = gpd.read_file(side)
        have = list(gdf[gdf["label"] == "positive"].geometry)
        boxes = [_box_polygon(feats.iloc[k]) for k in range(len(feats))]
        best = max(range(len(boxes)), key=lambda k: max(_iou(boxes[k], h) for h in have))
        det.selected_data = {best}
        expected = accept_expected([best])
        canvas.key("a")
        saved({"positive": expected, "negative": n_neg})
        return expected, "merged" if expected == len(have) else "added"

    def accept_expected(sel: list[int]) -> int:
        """Positives after accepting detections `sel`: one overlapping a positive in the
        file (IoU >= 0.5, shapely) merges into it, any other adds one."""
        gdf = gpd.read_file(side)
        have = list(gdf[gdf["label"] == "positive"].geometry)
        feats = dock.model.state.detections.features
        for k in sel:
            box = _box_polygon(feats.iloc[k])
            if not any(_iou(box, h) >= 0.5 for h in have):
                have.append(box)
        return len(have)

    # ---- label: positives by dragging back -> front on true objects, one negative
    truth = gpd.read_file(sample_small.truth)
    truth = truth[truth["label"] == "positive"]
    picks = [
        *truth[truth["class"] == "vehicle"].index[:3],
        *truth[truth["class"] == "building"].index[:2],
    ]
    _click_button(dock.label_tab.tool_buttons["positive"])
    for i in picks:
        row = truth.loc[i]
        centre, axis, length, width = _box(row.geometry)
        if np.isfinite(row["heading_deg"]):
            t = math.radians(row["heading_deg"])
            axis = np.array([math.sin(t), math.cos(t)])
        dock.label_tab.set_current_class(row["class"])
        dock.label_tab.width_ratio.setValue(width / length)
        back, front = world([centre - axis * length / 2, centre + axis * length / 2])
        canvas.drag(back, front, steps=8)
    assert dock.label_counts()["positives"] == {"vehicle": 3, "building": 2}
    empty = _empty_square(truth, image)
    _click_button(dock.label_tab.tool_buttons["negative"])
    canvas.polygon(world(np.asarray(empty.exterior.coords)[:4]))
    _click_button(dock.label_tab.tool_buttons["pan"])
    qtbot.waitUntil(
        lambda: side.is_file() and _labels(side) == {"positive": 5, "negative": 1}, timeout=5000
    )
    drawn = gpd.read_file(side)
    got = drawn[drawn["label"] == "positive"].geometry
    for i in picks:  # each drawn box lies on its object
        iou = max(
            truth.loc[i].geometry.intersection(g).area / truth.loc[i].geometry.union(g).area
            for g in got
        )
        assert iou > 0.6
    dock.tabs.setCurrentIndex(0)
    viewer.screenshot(str(shots / "napari_label.png"), canvas_only=False)

    # ---- train (tiny), in a child process
    dock.tabs.setCurrentIndex(1)
    dock.train_tab.epochs.setValue(1)
    dock.train_tab.config.setText(str(tmp_path / "tiny.yaml"))
    dock.train_tab.out.setText(str(tmp_path / "models"))
    _click_button(dock.train_tab.train_button)
    assert dock.job is not None and dock.job.pid != os.getpid()
    wait_job()
    first = dock.model_path
    assert first == tmp_path / "models" / "run-001" / "model.pt" and first.is_file()
    assert _labels(first.parent / "labels.gpkg") == {"positive": 5, "negative": 1}
    saved({"positive": 5, "negative": 1})
    assert "loss" in dock.train_tab.loss.text()
    viewer.screenshot(str(shots / "napari_train.png"), canvas_only=False)

    # ---- detect in scene (zoomed in on a corner, for the review and Detect in view)
    r0, c0 = viewer.layers["scene"].translate
    viewer.camera.center = (r0 + 30, c0 + 30)
    viewer.camera.zoom *= 3
    qtbot.wait(300)
    dock.tabs.setCurrentIndex(2)
    dock.detect_tab.threshold.setValue(0.0)
    _click_button(dock.detect_tab.scene_button)
    wait_job()
    det = dock.layer(ll.DETECTIONS)
    n_scene = len(det.data)
    assert n_scene > 0 and det.mode == "select"
    saved({"positive": 5, "negative": 1})  # detections are not labels

    # ---- review: click a detection, a; click another, x (keys on the canvas)
    feats = dock.model.state.detections.features
    visible = [
        k
        for k in range(len(feats))
        if 0 <= canvas.px(world([[feats["cx"][k], feats["cy"][k]]])[0]).x() < canvas.native.width()
        and 0
        <= canvas.px(world([[feats["cx"][k], feats["cy"][k]]])[0]).y()
        < canvas.native.height()
    ]
    assert len(visible) >= 2
    n_pos, n_neg = 5, 1
    for key in ("a", "x"):
        k = visible.pop(0)
        target = world([[feats["cx"][k], feats["cy"][k]]])[0]
        det.selected_data = set()
        canvas.click(target)
        sel = sorted(det.selected_data)
        assert sel, "a click on a detection selects it"
        box = _box_polygon(feats.iloc[sel[0]])
        before = len(det.data)
        expected_pos = accept_expected(sel) if key == "a" else n_pos
        canvas.key(key)
        assert len(det.data) == before - len(sel)
        n_pos, n_neg = expected_pos, n_neg + (len(sel) if key == "x" else 0)
        saved({"positive": n_pos, "negative": n_neg})
        gdf = gpd.read_file(side)
        kind = "positive" if key == "a" else "negative"
        # the reviewed box is in the file: as a new positive, the positive it merged into, or
        # a hard negative
        assert max(_iou(box, g) for g in gdf[gdf["label"] == kind].geometry) > 0.5
        feats = dock.model.state.detections.features
        visible = [v - sum(v > s for s in sel) for v in visible if v not in sel]
    counts = dock.label_counts()
    assert sum(counts["positives"].values()) == n_pos and counts["negatives"] == n_neg

    # ---- detect in view: the same model finds the accepted object again; accepting that
    # detection merges it into its positive (file unchanged) instead of duplicating it
    _click_button(dock.detect_tab.view_button)
    wait_job()
    assert 0 < len(det.data) <= n_scene
    saved({"positive": n_pos, "negative": n_neg})
    n_pos, merged = accept_best()
    print(f"loop: accepting the view's detection of a labelled object {merged}")
    viewer.screenshot(str(shots / "napari_detect.png"), canvas_only=False)

    # ---- retrain (a new run folder, warm-started from `first`: train --init), detect
    dock.tabs.setCurrentIndex(1)
    _click_button(dock.train_tab.train_button)
    wait_job()
    assert dock.model_path == tmp_path / "models" / "run-002" / "model.pt"
    metrics = json.loads((dock.model_path.parent / "metrics.json").read_text())
    assert metrics["init"] == str(first)
    assert _labels(dock.model_path.parent / "labels.gpkg") == {"positive": n_pos, "negative": n_neg}
    saved({"positive": n_pos, "negative": n_neg})
    dock.tabs.setCurrentIndex(2)
    n_left = len(det.data)
    _click_button(dock.detect_tab.scene_button)
    wait_job()
    assert len(dock.layer(ll.DETECTIONS).data) > 0
    saved({"positive": n_pos, "negative": n_neg})
    after, merged = accept_best()
    print(f"loop: final accept {merged}")
    dock.undo()  # the accept
    dock.undo()  # the previous detections come back
    qtbot.waitUntil(lambda: not dock.busy, timeout=60_000)
    assert len(dock.layer(ll.DETECTIONS).data) == n_left
    saved({"positive": n_pos, "negative": n_neg})

    heartbeat.stop()
    t, job = np.array(ticks).T
    gaps = np.diff(t)[np.diff(job) == 0]  # within one job
    print(f"loop: longest GUI gap {gaps.max():.2f} s; >0.2 s gaps: {int((gaps > 0.2).sum())}")
    print("loop: gaps > 0.2 s:", np.round(np.sort(gaps)[-8:], 2))
    # responsive while jobs ran: ~0.1 s unloaded; CI's 2 cores shared with other jobs saw 3 s
    assert gaps.max() < 5.0
    if not torch_before:
        assert "torch" not in sys.modules  # train and detect stayed out of this process


def _empty_square(truth: gpd.GeoDataFrame, image: Path):
    """A 12 m square of the scene that holds no true object."""
    import rasterio

    left, bottom, right, top = rasterio.open(image).bounds
    objects = shapely.union_all(truth.geometry.buffer(1.0).to_numpy())
    for y in np.arange(top - 20, bottom + 20, -15):
        for x in np.arange(left + 20, right - 20, 15):
            sq = shapely.box(x, y - 12, x + 12, y)
            if not sq.intersects(objects):
                return sq
    raise AssertionError("no empty square")
