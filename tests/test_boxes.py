"""boxes: pixel <-> map boxes and headings, the one polygon -> box converter, detection tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _grids import TRANSFORMS, UTM, assert_same_boxes, north_up, random_boxes, rotated
from affine import Affine

from geodetect import boxes as B
from geodetect import geometry
from geodetect.labels import read_vector, write_vector
from geodetect.raster import Grid

# ------------------------------------------------------------------ pixel <-> map conversions


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_box_polygon_round_trip(name: str) -> None:
    t = TRANSFORMS[name]
    boxes = random_boxes(300)
    heads = geometry.wrap_heading(boxes[:, 4] + 180.0 * (np.arange(300) % 2))
    polys = B.boxes_to_polygons(boxes, t, heads)
    back, implied = B.polygon_boxes(polys, t)
    assert_same_boxes(back, boxes, 1e-6)
    assert geometry.angle_difference(implied, heads, 360.0).max() < 1e-6
    # the polygon really sits where the transform puts the pixel centre
    centre = np.array(t * (boxes[0, 0], boxes[0, 1]))
    np.testing.assert_allclose(np.array(polys[0].centroid.coords[0]), centre, atol=1e-6)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_heading_frame_conversion(name: str) -> None:
    t = TRANSFORMS[name]
    h = np.array([0.0, 10.0, 90.0, 179.0, 270.0, 359.9, np.nan])
    there = B.heading_to_map(h, t)
    back = B.heading_to_pixel(there, t)
    assert geometry.angle_difference(back[:-1], h[:-1], 360.0).max() < 1e-9
    assert np.isnan(there[-1])
    # against the geometry itself: the map direction of a pixel step along h
    p0, p1 = (
        np.array(t * (10.0, 10.0)),
        np.array(t * tuple(np.array([10.0, 10.0]) + geometry.direction(h[1]))),
    )
    assert geometry.vector_angle(p1 - p0, y_down=False) == pytest.approx(there[1])


def test_north_up_angles_equal_and_rotated_shift() -> None:
    h = np.array([0.0, 45.0, 300.0])
    np.testing.assert_allclose(B.heading_to_map(h, north_up()), h, atol=1e-12)
    # a grid turned 30 degrees counter-clockwise: pixel north points to map 330
    np.testing.assert_allclose(B.heading_to_map(h, rotated(30.0)), [330.0, 15.0, 270.0], atol=1e-9)
    # no CRS: the map frame is the pixel frame (identity transform, y down)
    np.testing.assert_allclose(B.heading_to_map(h, Affine.identity(), georeferenced=False), h)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_detections_frame_schema_and_map_angles(name: str) -> None:
    t = TRANSFORMS[name]
    grid = Grid(UTM, t, 256, 256)
    boxes = random_boxes(20, seed=5)
    heads = geometry.wrap_heading(boxes[:, 4] + 180.0 * (np.arange(20) % 2))
    heads[::3] = np.nan  # classes without a front
    classes = ["vehicle"] * 20
    det = B.detections_frame(boxes, np.linspace(0.1, 1, 20), classes, heads, grid, "a.tif")
    assert list(det.columns) == [*B.DETECTION_FIELDS, "geometry"]
    assert det.crs == UTM and (det["image"] == "a.tif").all()
    res = 0.3 if name == "rotated_neg" else 0.5
    np.testing.assert_allclose(det["length_m"], boxes[:, 2] * res, rtol=1e-9)
    np.testing.assert_allclose(det["width_m"], boxes[:, 3] * res, rtol=1e-9)
    assert det["heading_deg"].isna().sum() == 7
    # map-frame fields agree with the written polygons, measured independently
    corners, ok = B.quad_corners(det.geometry.to_numpy())
    assert ok.all()
    mb, implied = geometry.boxes_from_corners(corners, y_down=False)
    assert geometry.angle_difference(det["angle_deg"], mb[:, 4]).max() < 1e-6
    front = det["heading_deg"].notna().to_numpy()
    assert geometry.angle_difference(det["heading_deg"][front], implied[front], 360).max() < 1e-6
    a = det["angle_deg"].to_numpy()
    assert ((a >= 0) & (a < 180)).all()


def test_detections_frame_empty_and_pixel_grid(tmp_path: Path) -> None:
    grid = Grid(None, Affine.identity(), 64, 64)
    empty = B.detections_frame(np.zeros((0, 5)), np.zeros(0), [], np.zeros(0), grid, "a.png")
    assert len(empty) == 0 and list(empty.columns) == [*B.DETECTION_FIELDS, "geometry"]
    write_vector(empty, tmp_path / "d.gpkg")
    assert len(read_vector(tmp_path / "d.gpkg")) == 0
    b = np.array([[10.0, 20.0, 8.0, 2.0, 60.0]])
    det = B.detections_frame(b, [0.9], ["car"], np.array([240.0]), grid, "a.png")
    assert det.crs is None
    assert det["angle_deg"].iloc[0] == pytest.approx(60.0)
    assert det["heading_deg"].iloc[0] == pytest.approx(240.0)
    assert det.geometry.iloc[0].centroid.coords[0] == pytest.approx((10.0, 20.0))


# ------------------------------------------------------------------ the one converter


def _skewed(skew: float) -> np.ndarray:
    """A 10 x 4 rectangle (y down) whose front edge slides by `skew` x its width: corners
    off square by about `skew` radians."""
    d = 4.0 * skew
    return np.array([[[-5.0 + d, -2.0], [5.0 + d, -2.0], [5.0, 2.0], [-5.0, 2.0]]])


def test_one_tolerance_for_every_converter() -> None:
    """A rectangle drawn 3 % off square is a box everywhere; 8 % off is one nowhere."""
    import geopandas as gpd
    import shapely

    for skew, ok in ((0.03, True), (0.08, False)):
        c = _skewed(skew)
        poly = shapely.polygons(c)
        calls = [
            lambda c=c: B.corner_boxes(c),
            lambda p=poly: B.polygon_boxes(p),
            lambda p=poly: B.table_boxes(gpd.GeoDataFrame(geometry=list(p))),
        ]
        for call in calls:
            if ok:
                call()
            else:
                with pytest.raises(B.NotRectangle):
                    call()


def test_polygon_boxes_names_the_bad_polygon_and_takes_one_part_multis() -> None:
    import shapely

    good = B.boxes_to_polygons(random_boxes(3, seed=2), north_up())
    tri = shapely.Polygon([(0, 0), (1, 0), (0, 1)])
    with pytest.raises(B.NotRectangle, match="polygon 2 is not") as err:
        B.polygon_boxes([*good[:2], tri, good[2]], north_up())
    assert err.value.index == 2
    multi = [shapely.MultiPolygon([g]) for g in good]
    np.testing.assert_array_equal(
        B.polygon_boxes(multi, north_up())[0], B.polygon_boxes(good, north_up())[0]
    )
    assert B.polygon_boxes([], north_up())[0].shape == (0, 5)


def test_table_boxes_mirror_the_map_frame() -> None:
    """A CRS table's boxes are its map boxes with y negated (angles kept); CRS-less: as is."""
    import geopandas as gpd

    boxes = random_boxes(10, seed=4)
    polys = B.boxes_to_polygons(boxes, north_up())
    gdf = gpd.GeoDataFrame(geometry=polys, crs=UTM)
    got = B.table_boxes(gdf)
    mapped, _ = B.polygon_boxes(polys, y_down=False)
    np.testing.assert_allclose(got[:, 0], mapped[:, 0])
    np.testing.assert_allclose(got[:, 1], -mapped[:, 1])
    assert_same_boxes(got[:, [0, 0, 2, 3, 4]], mapped[:, [0, 0, 2, 3, 4]], 1e-9)
    pix = gpd.GeoDataFrame(geometry=B.boxes_to_polygons(boxes, Affine.identity()))
    assert_same_boxes(B.table_boxes(pix), boxes, 1e-9)
