"""north: angles and headings turned by the meridian convergence when features change CRS,
and merging refuses to mix pixel-frame and georeferenced scenes (issue 14, case 3)."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pytest
from _shapes import rect
from pyproj import Transformer

from geodetect import geometry
from geodetect.boxes import table_boxes
from geodetect.errors import CRSError
from geodetect.merge import merge_detections

UTM32, UTM33 = "EPSG:32632", "EPSG:32633"


def _detections(crs: str | None, xy: tuple[float, float], image: str) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "class": ["car"],
            "score": [0.9],
            "angle_deg": [0.0],
            "heading_deg": [0.0],
            "length_m": [4.5],
            "width_m": [1.8],
            "image": [image],
        },
        geometry=[rect(*xy, 4.5, 1.8, 0.0)],
        crs=crs,
    )


def test_merge_into_another_utm_zone_turns_angles_and_headings():
    """A car facing grid north in UTM 33 at 60 N, 12.5 E, merged into a file in UTM 32:
    its polygon turns by the convergence difference (about 5 degrees), so must its fields."""
    x, y = Transformer.from_crs("EPSG:4326", UTM33, always_xy=True).transform(12.5, 60.0)
    other = _detections(UTM32, (500_000.0, 6_650_000.0), "b.tif")
    merged = merge_detections([other, _detections(UTM33, (x, y), "a.tif")], 0.3)
    assert str(merged.crs.to_epsg()) == "32632"
    row = merged[merged["image"] == "a.tif"].iloc[0]
    polygon_angle = table_boxes(merged[merged["image"] == "a.tif"])[0, 4]
    assert 4.0 < geometry.angle_difference(np.array([polygon_angle]), np.array([0.0]))[0] < 6.5
    assert (
        geometry.angle_difference(np.array([row["angle_deg"]]), np.array([polygon_angle]))[0] < 0.05
    )
    assert row["heading_deg"] % 180 == pytest.approx(row["angle_deg"], abs=1e-9)
    assert 350.0 < row["heading_deg"] < 356.0  # still facing (grid) north-ish, turned west


def test_true_north_is_zero_on_the_central_meridian_and_signed_off_it():
    x, y = Transformer.from_crs("EPSG:4326", UTM33, always_xy=True).transform(
        [15.0, 12.0, 18.0], [60.0, 60.0, 60.0]
    )
    from pyproj import CRS

    from geodetect.north import true_north

    t = true_north(CRS(UTM33), np.array(x), np.array(y))
    assert abs(t[0]) < 1e-6 or abs(t[0] - 360) < 1e-6
    west = (t[1] + 180) % 360 - 180
    east = (t[2] + 180) % 360 - 180
    assert west == pytest.approx(-east, abs=0.01) and abs(west) == pytest.approx(
        3 * math.sin(math.radians(60)), abs=0.05
    )


def test_merge_refuses_pixel_frame_mixed_with_a_crs():
    georef = _detections(UTM33, (500_000.0, 5_000_000.0), "a.tif")
    pixels = _detections(None, (50.0, 50.0), "b.png")
    for frames in ([georef, pixels], [pixels, georef]):
        with pytest.raises(CRSError, match="with and without a CRS"):
            merge_detections(frames, 0.3)


def _car_in_utm33(heading: float, length: float = 4.5, width: float = 1.8) -> gpd.GeoDataFrame:
    """A labelled car at 60 N, 12.5 E (UTM 33; UTM 32's grid north is ~5 degrees off)."""
    x, y = Transformer.from_crs("EPSG:4326", UTM33, always_xy=True).transform(12.5, 60.0)
    return gpd.GeoDataFrame(
        {"label": ["positive"], "class": ["car"], "heading_deg": [heading]},
        geometry=[rect(x, y, length, width, heading)],
        crs=UTM33,
    )


def test_turned_headings_snap_to_the_reprojected_rectangle():
    """Front on the long axis (0) and on a long side (90, a 2 m deep, 4.5 m wide object)."""
    from geodetect.north import turn, turn_headings

    for heading, length, width in ((0.0, 4.5, 1.8), (90.0, 1.8, 4.5)):
        src = _car_in_utm33(heading, length, width)
        dst = src.to_crs(UTM32)
        angle = table_boxes(dst)[:, 4]
        plain = turn_headings(src["heading_deg"].to_numpy(), src, dst)
        snapped = turn_headings(src["heading_deg"].to_numpy(), src, dst, angles=angle)
        assert plain == pytest.approx(geometry.wrap_heading(heading + turn(src, dst)))
        assert geometry.angle_difference(snapped, plain, 360.0)[0] < 0.05
        # on a side of the rectangle exactly: the angle, +90, +180 or +270
        assert geometry.angle_difference(snapped, angle, 90.0)[0] < 1e-9
    assert np.isnan(turn_headings(np.array([np.nan]), src, dst, angles=angle)).all()


def test_labels_on_another_zones_grid_turn_their_headings():
    """The label reader turns headings through north too: a car facing grid north in UTM 33
    faces ~5 degrees west of grid north on a UTM 32 scene, along its reprojected polygon."""
    from affine import Affine
    from rasterio.crs import CRS

    from geodetect.labels import labels_for_grid
    from geodetect.raster import Grid

    gdf = _car_in_utm33(0.0)
    x, y = gdf.to_crs(UTM32).geometry.iloc[0].centroid.coords[0]
    grid = Grid(CRS.from_string(UTM32), Affine(0.25, 0, x - 32, 0, -0.25, y + 32), 256, 256)
    scene = labels_for_grid(gdf, grid)
    heading, angle = scene.headings[0], scene.boxes[0, 4]
    assert 350.0 < heading < 356.0
    assert geometry.angle_difference(np.array([heading]), np.array([angle]))[0] < 0.05
