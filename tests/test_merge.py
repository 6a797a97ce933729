"""merge: duplicates across tiles and tasks removed by rotated IoU, per scene and class, in a
stable order, in one CRS."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from _shapes import rect
from pyproj import Transformer

from geodetect import geometry
from geodetect.boxes import table_boxes
from geodetect.errors import CRSError
from geodetect.labels import DETECTION_FIELDS
from geodetect.merge import empty_detections, merge_detections, sort_detections

X0, Y0 = 500_000.0, 5_000_000.0
UTM32, UTM33 = "EPSG:32632", "EPSG:32633"


def _frame(rows, image="a.tif", crs=UTM33, scene=None) -> gpd.GeoDataFrame:
    """Detections from (class, score, (cx, cy, length, width, angle)) in metres from X0, Y0."""
    boxes = [(X0 + b[0], Y0 + b[1], *b[2:]) for _, _, b in rows]
    gdf = gpd.GeoDataFrame(
        {
            "class": [r[0] for r in rows],
            "score": [r[1] for r in rows],
            "angle_deg": [b[4] for b in boxes],
            "heading_deg": [np.nan] * len(rows),
            "length_m": [b[2] for b in boxes],
            "width_m": [b[3] for b in boxes],
            "image": [image] * len(rows),
        },
        geometry=[rect(*b) for b in boxes],
        crs=crs,
    )
    if scene is not None:
        gdf.attrs["scene"] = scene
    return gdf


def test_tile_duplicate_removed_higher_score_kept():
    left = _frame([("car", 0.6, (10, 10, 4.5, 2, 30)), ("car", 0.7, (40, 10, 4.5, 2, 0))])
    right = _frame([("car", 0.8, (10.2, 10.1, 4.5, 2, 31))])  # the first car, seen again
    m = merge_detections([left, right], nms_iou=0.3)
    assert sorted(m["score"]) == [0.7, 0.8]
    kept = m[m["score"] == 0.8].geometry.iloc[0].centroid
    assert (kept.x - X0, kept.y - Y0) == pytest.approx((10.2, 10.1))


def test_overlap_is_the_rotated_iou_not_the_bounds():
    """Two diagonal bars crossing at 90°: the same axis-aligned bounds, a small oriented IoU
    (1 / 19): both stay. The same bar slightly moved is a duplicate."""
    crossed = _frame([("car", 0.9, (0, 0, 10, 1, 45)), ("car", 0.8, (0, 0, 10, 1, 135))])
    assert len(merge_detections([crossed], nms_iou=0.3)) == 2
    moved = _frame([("car", 0.9, (0, 0, 10, 1, 45)), ("car", 0.8, (0.1, 0.1, 10, 1, 45))])
    assert len(merge_detections([moved], nms_iou=0.3)) == 1


def test_per_class_and_per_scene():
    box = (10, 10, 4.5, 2, 30)
    same_place = _frame([("car", 0.9, box), ("truck", 0.5, box)])
    assert sorted(merge_detections([same_place], 0.3)["class"]) == ["car", "truck"]
    # two scenes: by image name, or by full path when both files are called TCI.tif
    a, b = _frame([("car", 0.9, box)], "a.tif"), _frame([("car", 0.8, box)], "b.tif")
    assert len(merge_detections([a, b], 0.3)) == 2
    s1 = _frame([("car", 0.9, box)], "TCI.tif", scene="s3://bucket/one/TCI.tif")
    s2 = _frame([("car", 0.8, box)], "TCI.tif", scene="s3://bucket/two/TCI.tif")
    assert len(merge_detections([s1, s2], 0.3)) == 2
    s2.attrs["scene"] = s1.attrs["scene"]  # two tasks of one scene
    assert list(merge_detections([s1, s2], 0.3)["score"]) == [0.9]


def test_crs_kept_or_reprojected():
    box = (10, 10, 4.5, 2, 0)
    first = _frame([("car", 0.9, box)])
    assert merge_detections([first], 0.3).crs == UTM33
    m = merge_detections([first], 0.3, crs=UTM32)
    assert m.crs == UTM32
    x, y = Transformer.from_crs(UTM33, UTM32, always_xy=True).transform(X0 + 10, Y0 + 10)
    c = m.geometry.iloc[0].centroid
    assert (c.x, c.y) == pytest.approx((x, y), abs=0.01)
    # the box points at zone 33's grid north (= true north on its meridian, 15°E), 6° east
    # of zone 32's meridian: there it points where a 1 m step north lands
    x1, y1 = Transformer.from_crs(UTM33, UTM32, always_xy=True).transform(X0 + 10, Y0 + 11)
    angle = np.degrees(np.arctan2(x1 - x, y1 - y)) % 180
    assert abs(angle - 180) > 3 and abs(angle) > 3  # the turn is a few degrees, not nothing
    assert m["angle_deg"].iloc[0] == pytest.approx(angle, abs=0.01)
    assert list(m.columns) == [*DETECTION_FIELDS, "geometry"]


def test_pixel_and_map_frames_do_not_mix():
    pixels = _frame([("car", 0.9, (10, 10, 4.5, 2, 0))], crs=None)
    with pytest.raises(CRSError, match="separate --out"):
        merge_detections([_frame([("car", 0.9, (10, 10, 4.5, 2, 0))]), pixels], 0.3)
    assert merge_detections([pixels], 0.3).crs is None


def test_table_boxes_in_either_frame():
    """Map frame (y north) is mirrored to y-down; the angle clockwise from north is the same."""
    gdf = _frame([("car", 0.9, (10, 10, 4.5, 2, 30))])
    assert table_boxes(gdf)[0] == pytest.approx([X0 + 10, -(Y0 + 10), 4.5, 2, 30])
    corners = geometry.box_corners(np.array([[5.0, 7.0, 6.0, 3.0, 120.0]]), y_down=True)
    pixels = gpd.GeoDataFrame(geometry=[shapely.Polygon(corners[0])])
    assert table_boxes(pixels)[0] == pytest.approx([5, 7, 6, 3, 120])
    bad = gpd.GeoDataFrame(geometry=[rect(0, 0, 4, 2, 0), shapely.Point(0, 0).buffer(1)])
    with pytest.raises(ValueError, match="1 is not a 4-corner rectangle"):
        table_boxes(bad)


def test_order_is_stable_whatever_the_input_order():
    rows = [
        ("car", 0.8, (0, 0, 4.5, 2, 0)),
        ("car", 0.8, (0, 30, 4.5, 2, 0)),  # same score, further north: first
        ("car", 0.9, (60, 60, 4.5, 2, 0)),
        ("building", 0.5, (100, 100, 12, 8, 0)),
    ]
    a = sort_detections(_frame(rows))
    b = sort_detections(_frame(rows[::-1]))
    assert list(a["class"]) == ["building", "car", "car", "car"]
    assert list(a["score"]) == [0.5, 0.9, 0.8, 0.8]
    assert a.geometry.centroid.y.iloc[2] - Y0 == pytest.approx(30)
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals(b.geometry).all()


def test_nothing_to_merge():
    empty = merge_detections([None, empty_detections(UTM33)], 0.3)
    assert len(empty) == 0 and empty.crs == UTM33
    assert list(empty.columns) == [*DETECTION_FIELDS, "geometry"]
