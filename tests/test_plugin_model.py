"""The labelling model without Qt: undo/redo depth, front flags, accept merges, stray shapes."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Polygon

from geodetect.plugin import _label_layer as ll
from geodetect.plugin._label_layer import drag_box
from geodetect.plugin._model import LabelModel, autosave_path

CRS = "EPSG:32633"
FRAME = ll.LabelFrame(True, CRS, (-5_000_100.0, 500_000.0), "scene.tif", None)


def _model() -> LabelModel:
    return LabelModel(FRAME, {"vehicle": True, "building": False})


def _corners(cx, cy, length, width, heading):
    t = math.radians(heading)
    fwd, right = np.array([math.sin(t), math.cos(t)]), np.array([math.cos(t), -math.sin(t)])
    c, h, w = np.array([cx, cy]), length / 2, width / 2
    return [
        c + fwd * h - right * w,
        c + fwd * h + right * w,
        c - fwd * h + right * w,
        c - fwd * h - right * w,
    ]


def _detections(centres, heading=240.0, cls="vehicle"):
    polys = [Polygon(_corners(x, y, 4.6, 1.9, heading)) for x, y in centres]
    n = len(polys)
    return gpd.GeoDataFrame(
        {"class": [cls] * n, "score": np.linspace(0.9, 0.4, n), "heading_deg": [heading] * n},
        geometry=polys,
        crs=CRS,
    )


def test_undo_and_redo_are_many_steps_deep() -> None:
    """Issue 12.6: three drags then three undos removed one box."""
    m = _model()
    for k in range(3):
        m.add_positive([500_010.0 + 10 * k, 5_000_050.0, 5.0, 2.0, 30.0], 30.0, "vehicle")
    m.add_negative(Polygon([(500_000, 5_000_000), (500_020, 5_000_000), (500_020, 5_000_020)]))
    assert m.counts() == {"positives": {"vehicle": 3}, "negatives": 1}
    for n_pos, n_neg in ((3, 0), (2, 0), (1, 0), (0, 0)):
        assert m.undo()
        assert (len(m.state.positives), len(m.state.negatives)) == (n_pos, n_neg)
    assert not m.undo()
    for _ in range(4):
        assert m.redo()
    assert m.counts() == {"positives": {"vehicle": 3}, "negatives": 1}
    m.undo()
    m.add_positive([500_050.0, 5_000_050.0, 5.0, 2.0, 0.0], 0.0, "vehicle")
    assert not m.redo()  # a new edit forgets the undone branch


def test_undo_after_accept_brings_the_detection_back() -> None:
    m = _model()
    m.set_detections(_detections([(500_040.0, 5_000_040.0), (500_080.0, 5_000_040.0)]))
    assert m.accept([0]) == (1, 0)
    assert len(m.state.detections) == 1 and len(m.state.positives) == 1
    m.undo()
    assert len(m.state.detections) == 2 and len(m.state.positives) == 0
    assert m.reject([1]) == 1
    m.undo()
    assert len(m.state.detections) == 2 and len(m.state.negatives) == 0


def test_front_flag_off_and_on_keeps_every_heading() -> None:
    """Issue 12.7: unticking and re-ticking a class's front flipped 148 of 348 headings."""
    m = _model()
    rng = np.random.default_rng(0)
    heads = rng.uniform(0, 360, 40)
    for k, h in enumerate(heads):
        m.add_positive([500_000.0 + 10 * k, 5_000_050.0, 5.0, 2.0, h % 180], h, "vehicle")
    before = m.labels_frame()["heading_deg"].to_numpy()
    m.set_front("vehicle", False)
    assert m.labels_frame()["heading_deg"].isna().all()
    assert len(m.heading_arrows()) == 0
    m.set_front("vehicle", True)
    np.testing.assert_allclose(m.labels_frame()["heading_deg"].to_numpy(), before, atol=1e-6)
    np.testing.assert_allclose(before, heads, atol=1e-6)


def test_accepting_a_labelled_object_merges_it() -> None:
    """Issue 12.8: a box-select of 31 + a left 8 duplicate pairs."""
    m = _model()
    centres = [(500_020.0 + 10 * k, 5_000_040.0) for k in range(6)]
    for x, y in centres[:3]:  # the first three are already labelled (slightly off)
        m.add_positive([x + 0.2, y - 0.1, 4.5, 1.9, 60.0], 240.0, "vehicle")
    gdf = _detections(centres)
    dup = _detections(centres[4:5])  # the same object detected twice
    m.set_detections(gpd.GeoDataFrame(gpd.pd.concat([gdf, dup], ignore_index=True), crs=CRS))
    added, merged = m.accept(range(7))
    assert (added, merged) == (3, 4)
    assert len(m.state.positives) == 6 and len(m.state.detections) == 0
    boxes, _ = m.positive_boxes()
    from geodetect.geometry import rotated_iou

    iou = rotated_iou(boxes, boxes) - np.eye(len(boxes))
    assert iou.max() < 0.5


def test_stray_negative_clicks_never_reach_the_file(tmp_path) -> None:
    """Issue 12.5: a 2-vertex negative made autosave fail ('A linearring requires at least
    4 coordinates')."""
    m = LabelModel(
        ll.LabelFrame(True, CRS, FRAME.translate, "scene.tif", str(tmp_path / "scene.tif")),
        {"vehicle": True},
    )
    good = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0]])
    stray = np.array([[50.0, 50.0], [50.0, 51.0]])
    import pandas as pd

    m.negatives_from_layer([good, stray], pd.DataFrame({"wkb": [None, None]}))
    assert len(m.state.negatives) == 1
    out = m.autosave()
    assert out == autosave_path(tmp_path / "scene.tif") and len(gpd.read_file(out)) == 1


def test_drag_box_heading_and_width() -> None:
    box, heading = drag_box((0.0, 0.0), (3.0, 4.0), None, 0.4)
    assert heading == pytest.approx(math.degrees(math.atan2(3, 4)))
    assert box[2:4] == pytest.approx([5.0, 2.0])


def test_a_table_in_another_crs_comes_in_with_turned_headings() -> None:
    """Labels in UTM 32 opened on a UTM 33 scene: headings turn with grid north (north.py)."""
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(12.5, 60.0)
    gdf = gpd.GeoDataFrame(
        {"label": ["positive"], "class": ["vehicle"], "heading_deg": [0.0]},
        geometry=[Polygon(_corners(x, y, 4.6, 1.9, 0.0))],
        crs="EPSG:32632",
    )
    _, feats, _, _, has_front = ll.frame_to_layers(gdf, FRAME)
    heading, angle = feats["heading_deg"].iloc[0], feats["angle"].iloc[0]
    assert has_front == {"vehicle": True}
    assert 4.0 < heading < 6.5  # UTM 33's grid north is west of UTM 32's there
    assert abs(heading - angle) < 0.05
