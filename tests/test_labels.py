"""Label and detection files: schema validation, CRS, scene grids, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from _grids import TRANSFORMS, UTM, assert_same_boxes, north_up, random_boxes
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon, box

from geodetect import geometry
from geodetect import labels as L
from geodetect.boxes import boxes_to_polygons, labels_frame, quad_corners
from geodetect.errors import CRSError, InputError, LabelError
from geodetect.raster import Grid


def _frame(**cols) -> gpd.GeoDataFrame:
    geoms = cols.pop("geometry")
    return gpd.GeoDataFrame(cols, geometry=geoms, crs=cols.pop("crs", UTM))


# ----------------------------------------------------------------------------- file formats


def _labels(grid: Grid, n: int = 12, image: str | None = None) -> tuple[gpd.GeoDataFrame, dict]:
    boxes = random_boxes(n, seed=7)
    heads = np.where(np.arange(n) % 2 == 0, geometry.wrap_heading(boxes[:, 4] + 180.0), np.nan)
    classes = ["vehicle" if i % 2 == 0 else "building" for i in range(n)]
    hole = box(100, 100, 200, 200).difference(box(120, 120, 140, 140))
    negs = [hole, MultiPolygon([box(0, 0, 10, 10), box(30, 30, 40, 40)])]
    gdf = labels_frame(boxes, classes, heads, negs, grid, image)
    return gdf, {"boxes": boxes, "heads": heads, "classes": classes, "negs": negs}


@pytest.mark.parametrize("ext", ["gpkg", "geojson", "shp"])
@pytest.mark.parametrize("name", ["north_up", "rotated"])
def test_write_read_round_trip(tmp_path: Path, ext: str, name: str) -> None:
    grid = Grid(UTM, TRANSFORMS[name], 256, 256)
    gdf, truth = _labels(grid)
    out = L.write_vector(gdf, tmp_path / f"labels.{ext}")
    assert out == tmp_path / f"labels.{ext}"
    back = L.read_labels(out)
    assert back.crs.equals(UTM)
    assert list(back["label"]) == list(gdf["label"])
    scene = L.labels_for_grid(back, grid, "scene.tif")
    assert_same_boxes(scene.boxes, truth["boxes"], 1e-6)
    assert scene.classes == truth["classes"]
    np.testing.assert_allclose(scene.headings, truth["heads"], atol=1e-6)  # NaN where NaN
    assert len(scene.negatives) == 2 and len(scene.negatives[0].interiors) == 1
    for got, want in zip(scene.negatives, truth["negs"], strict=True):
        assert got.symmetric_difference(want).area < 1e-6
    assert scene.feature_ids == list(range(12))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    if ext == "shp":
        assert {p.suffix for p in tmp_path.iterdir()} >= {".shp", ".shx", ".dbf", ".prj"}


def test_shapefile_overwrite_drops_stale_sidecar(tmp_path: Path) -> None:
    gdf = _frame(label=["negative"], geometry=[box(0, 0, 1, 1)])
    L.write_vector(gdf, tmp_path / "x.shp")
    assert (tmp_path / "x.prj").exists()
    L.write_vector(gdf.set_crs(None, allow_override=True), tmp_path / "x.shp")
    assert not (tmp_path / "x.prj").exists()  # an old .prj would give the new file a CRS
    assert L.read_vector(tmp_path / "x.shp").crs is None


def test_write_into_missing_folder_is_input_error(tmp_path: Path) -> None:
    gdf = _frame(label=["negative"], geometry=[box(0, 0, 1, 1)])
    with pytest.raises(InputError, match="does not exist"):
        L.write_vector(gdf, tmp_path / "nope" / "labels.gpkg")
    with pytest.raises(InputError, match="unknown vector format"):
        L.write_vector(gdf, tmp_path / "labels.xyz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", ["gpkg", "shp"])
def test_interrupted_write_keeps_previous_file(tmp_path: Path, monkeypatch, ext: str) -> None:
    target = tmp_path / f"labels.{ext}"
    first = _frame(label=["negative"], geometry=[box(0, 0, 1, 1)])
    L.write_vector(first, target)
    before = target.read_bytes()
    real = L.pyogrio.write_dataframe

    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)  # the temp file is complete ...
        raise KeyboardInterrupt  # ... and the user hits Ctrl-C before the rename

    monkeypatch.setattr(L.pyogrio, "write_dataframe", write_then_die)
    second = _frame(label=["negative"] * 2, geometry=[box(0, 0, 2, 2), box(5, 5, 6, 6)])
    with pytest.raises(KeyboardInterrupt):
        L.write_vector(second, target)
    assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("ext", ["gpkg", "shp"])
def test_killed_writer_leaves_no_file(tmp_path: Path, ext: str) -> None:
    """SIGKILL after the data is written but before the rename: nothing under the final name."""
    target = tmp_path / f"labels.{ext}"
    code = f"""
import os, signal
import geopandas as gpd
from shapely.geometry import box
from geodetect import labels as L
real = L.pyogrio.write_dataframe
def die(*a, **k):
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
L.pyogrio.write_dataframe = die
gdf = gpd.GeoDataFrame({{"label": ["negative"]}}, geometry=[box(0, 0, 1, 1)])
L.write_vector(gdf, {str(target)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9
    assert not target.exists()
    assert not target.with_suffix(".dbf").exists()


# ------------------------------------------------------------------------------- validation


def _write(tmp_path: Path, gdf: gpd.GeoDataFrame, name: str = "labels.gpkg") -> Path:
    return L.write_vector(gdf, tmp_path / name)


def test_non_rectangle_positive_names_the_feature(tmp_path: Path) -> None:
    kite = Polygon([(0, 0), (4, 1), (5, 5), (1, 4)])
    pentagon = Polygon([(0, 0), (2, 0), (3, 1), (2, 2), (0, 2)])
    rect = box(10, 10, 14, 12)
    for bad in (kite, pentagon, rect.difference(box(11, 10.5, 12, 11))):
        gdf = _frame(
            label=["positive", "negative", "positive", "positive"],
            **{"class": ["car", None, "car", "car"]},
            geometry=[rect, box(0, 0, 50, 50), rect, bad],
        )
        with pytest.raises(
            LabelError, match=r"labels\.gpkg: feature 3 is not a 4-corner rectangle"
        ):
            L.read_labels(_write(tmp_path, gdf))


def test_schema_errors_are_one_line(tmp_path: Path) -> None:
    rect = box(0, 0, 4, 2)
    cases = {
        "label 'maybe'": _frame(
            label=["positive", "maybe"], **{"class": ["a", "b"]}, geometry=[rect] * 2
        ),
        "feature 1 is a positive without a class": _frame(
            label=["positive", "positive"], **{"class": ["a", None]}, geometry=[rect] * 2
        ),
        "no 'class' field": _frame(label=["positive"], geometry=[rect]),
        "no 'label' field": _frame(kind=["positive"], geometry=[rect]),
        "feature 0 is a LineString negative": _frame(
            label=["negative"], geometry=[shapely.LineString([(0, 0), (1, 1)])]
        ),
        "feature 0 has heading_deg 'north'": _frame(
            label=["positive"], **{"class": ["a"]}, heading_deg=["north"], geometry=[rect]
        ),
    }
    for msg, gdf in cases.items():
        with pytest.raises(LabelError, match=msg) as err:
            L.read_labels(_write(tmp_path, gdf))
        assert "\n" not in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="no such file"):
        L.read_labels(tmp_path / "missing.gpkg")
    (tmp_path / "empty.gpkg").write_bytes(b"")
    with pytest.raises(LabelError, match="empty file"):
        L.read_labels(tmp_path / "empty.gpkg")
    (tmp_path / "junk.gpkg").write_bytes(b"not a geopackage at all" * 100)
    with pytest.raises(LabelError, match="not a readable vector file") as err:
        L.read_labels(tmp_path / "junk.gpkg")
    assert "\n" not in str(err.value)
    none = _frame(label=[], geometry=gpd.GeoSeries([], crs=UTM))
    with pytest.raises(LabelError, match="no features"):
        L.read_labels(_write(tmp_path, none))


def test_normalised_fields(tmp_path: Path) -> None:
    """Case, single-part multipolygons (as QGIS writes) and headings out of range are fixed up."""
    rect = box(0, 0, 4, 2)
    gdf = _frame(
        label=[" Positive", "NEGATIVE"],
        **{"class": ["car", None]},
        heading_deg=[-90.0, None],
        geometry=[MultiPolygon([rect]), box(-5, -5, 10, 10)],
    )
    back = L.read_labels(_write(tmp_path, gdf))
    assert list(back["label"]) == ["positive", "negative"]
    assert back.geometry.iloc[0].geom_type == "Polygon"
    assert back["heading_deg"].iloc[0] == pytest.approx(270.0)
    assert np.isnan(back["heading_deg"].iloc[1])
    with pytest.raises(LabelError, match="feature 0 is not a 4-corner rectangle"):
        L.read_labels(
            _write(
                tmp_path,
                _frame(
                    label=["positive"],
                    **{"class": ["a"]},
                    geometry=[MultiPolygon([rect, box(9, 9, 10, 10)])],
                ),
            )
        )


# ------------------------------------------------------------------------------ scene grids


def test_wgs84_labels_on_utm_grid_within_half_pixel(tmp_path: Path) -> None:
    """RELIABILITY 7: labels stored in EPSG:4326 land on the UTM scene's pixels."""
    grid = Grid(UTM, north_up(0.3), 512, 512)
    gdf, truth = _labels(grid, n=30)
    wgs = gdf.to_crs(4326)
    # rotated rectangles are parallelograms in degrees: validation must judge them on the ground
    assert not geometry.is_rectangle(quad_corners(wgs.geometry.to_numpy())[0][:30], 0.05).all()
    path = L.write_vector(wgs, tmp_path / "labels.geojson")
    back = L.read_labels(path)
    assert back.crs.to_epsg() == 4326
    scene = L.labels_for_grid(back, grid, "scene.tif")
    err = np.hypot(*(scene.boxes[:, :2] - truth["boxes"][:, :2]).T)
    assert err.max() < 0.5
    assert np.abs(scene.boxes[:, 2:4] - truth["boxes"][:, 2:4]).max() < 0.5
    assert geometry.angle_difference(scene.boxes[:, 4], truth["boxes"][:, 4]).max() < 0.5
    front = np.isfinite(truth["heads"])
    assert geometry.angle_difference(scene.headings[front], truth["heads"][front], 360).max() < 0.5


def test_labels_without_crs_on_georeferenced_grid(tmp_path: Path) -> None:
    grid = Grid(UTM, north_up(), 256, 256)
    gdf, _ = _labels(grid)
    path = _write(tmp_path, gdf.set_crs(None, allow_override=True))
    back = L.read_labels(path)
    assert back.crs is None
    with pytest.raises(CRSError, match=r"labels\.gpkg has no CRS .*ogr2ogr -a_srs EPSG:32633"):
        L.labels_for_grid(back, grid, "scene.tif")


def test_georeferenced_labels_on_pixel_grid(tmp_path: Path) -> None:
    grid = Grid(None, Affine.identity(), 256, 256)
    gdf, _ = _labels(Grid(UTM, north_up(), 256, 256))
    with pytest.raises(CRSError, match="EPSG:32633 but scene.png has no CRS"):
        L.labels_for_grid(L.read_labels(_write(tmp_path, gdf)), grid, "scene.png")


@pytest.mark.parametrize("ext", ["gpkg", "geojson"])
def test_pixel_labels_on_pixel_grid(tmp_path: Path, ext: str) -> None:
    """No CRS anywhere: x = column, y = row; a GeoJSON without a crs member is fine too."""
    grid = Grid(None, Affine.identity(), 256, 256)
    gdf, truth = _labels(grid)
    assert gdf.crs is None
    # pixel frame: a heading of 90 points to +x, 0 to -row; the front edge is where it points
    back = L.read_labels(L.write_vector(gdf, tmp_path / f"l.{ext}"))
    scene = L.labels_for_grid(back, grid, "scene.png")
    assert_same_boxes(scene.boxes, truth["boxes"], 1e-6)
    np.testing.assert_allclose(scene.headings, truth["heads"], atol=1e-6)


def test_image_field_filters_rows_by_file_name() -> None:
    grid = Grid(UTM, north_up(), 256, 256)
    boxes = random_boxes(4, seed=9)
    gdf = labels_frame(boxes, ["car"] * 4, None, [], grid)
    gdf["image"] = ["a.tif", r"C:\data\b.tif", None, "/mnt/x/a.tif"]
    scene = L.labels_for_grid(gdf, grid, "/somewhere/else/a.tif")
    assert scene.feature_ids == [0, 2, 3]
    assert_same_boxes(scene.boxes, boxes[[0, 2, 3]], 1e-6)
    assert L.labels_for_grid(gdf, grid, "b.tif").feature_ids == [1, 2]
    assert L.labels_for_grid(gdf, grid).feature_ids == [0, 1, 2, 3]


def test_only_features_on_the_grid_are_kept() -> None:
    big = Grid(UTM, north_up(), 512, 512)
    boxes = np.array([[50.0, 50.0, 10, 4, 0], [300.0, 300.0, 10, 4, 0], [127.0, 60.0, 10, 4, 90]])
    negs = [box(400, 400, 450, 450), box(0, 0, 20, 20)]
    gdf = labels_frame(boxes, ["car"] * 3, None, negs, big)
    small = Grid(UTM, north_up(), 128, 128)  # same origin, a quarter of the area
    scene = L.labels_for_grid(gdf, small, "s.tif")
    assert scene.feature_ids == [0, 2]  # the one across the edge stays, whole
    assert scene.boxes[1, 0] == pytest.approx(127.0)
    assert len(scene.negatives) == 1 and scene.negatives[0].bounds == pytest.approx((0, 0, 20, 20))
    # a window of the grid: pixel frame shifts with it
    win = Grid(UTM, north_up() * Affine.translation(100, 40), 64, 64)
    moved = L.labels_for_grid(gdf, win, "s.tif")
    assert moved.feature_ids == [2]
    assert moved.boxes[0, :2] == pytest.approx([27.0, 20.0])


def test_empty_scene_labels_shapes() -> None:
    grid = Grid(UTM, north_up(), 64, 64)
    gdf = labels_frame(np.zeros((0, 5)), [], None, [box(0, 0, 10, 10)], grid)
    scene = L.labels_for_grid(gdf, grid)
    assert scene.boxes.shape == (0, 5) and scene.headings.shape == (0,) and scene.classes == []
    assert len(scene.negatives) == 1


@pytest.mark.parametrize("ext", ["gpkg", "geojson", "shp"])
def test_same_table_gives_byte_identical_file(tmp_path: Path, ext: str) -> None:
    """RELIABILITY 6: GeoPackages stamp the write time; ours do not vary between runs."""
    grid = Grid(UTM, north_up(), 256, 256)
    gdf, _ = _labels(grid)
    a = L.write_vector(gdf, tmp_path / f"a.{ext}").read_bytes()
    os.utime(tmp_path / f"a.{ext}", (0, 0))
    time.sleep(1.1)  # the stamp has a resolution of seconds
    (tmp_path / "b").mkdir()
    b = L.write_vector(gdf, tmp_path / "b" / f"a.{ext}").read_bytes()
    assert a == b


def test_numeric_class_values_are_names(tmp_path: Path) -> None:
    rect = boxes_to_polygons(np.array([[10.0, 10.0, 8.0, 4.0, 0.0]]), north_up())
    gdf = _frame(label=["positive"], **{"class": [3]}, geometry=rect)
    scene = L.labels_for_grid(L.read_labels(_write(tmp_path, gdf)), Grid(UTM, north_up(), 64, 64))
    assert scene.classes == ["3"]


# ------------------------------------------------------------------ issue 14: invalid, atomic


def test_bowtie_negative_is_repaired_and_said(tmp_path: Path, capsys) -> None:
    """A self-intersecting negative from QGIS: repaired with make_valid, said on stderr."""
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    gdf = _frame(
        label=["positive", "positive", "negative"],
        **{"class": ["car", "car", None]},
        geometry=[box(20, 20, 24, 22), box(30, 30, 34, 32), bowtie],
    )
    out = L.read_labels(_write(tmp_path, gdf))
    fixed = out.geometry.iloc[2]
    assert fixed.is_valid and fixed.area == pytest.approx(50.0)
    err = capsys.readouterr().err
    assert "feature 2" in err and "make_valid" in err and err.startswith("warning: ")


def test_nan_vertex_and_bowtie_positive_name_the_feature(tmp_path: Path) -> None:
    rect = box(20, 20, 24, 22)
    bowtie = Polygon([(0, 0), (4, 2), (4, 0), (0, 2)])  # a rectangle's corners, crossed
    nan = Polygon([(0, 0), (np.nan, 1), (1, 1), (0, 1)])
    for i, bad in ((1, bowtie), (2, nan)):
        labels = ["positive", "positive", "negative"]
        geoms = [rect, rect, box(0, 0, 50, 50)]
        geoms[i] = bad
        gdf = _frame(label=labels, **{"class": ["car", "car", None]}, geometry=geoms)
        with pytest.raises(LabelError, match=rf"feature {i} "):
            L.validate_labels(gdf, "labels.gpkg")


def test_shapefile_swap_failing_midway_keeps_the_old_file_whole(tmp_path: Path, monkeypatch):
    """Renaming the new parts in fails after the first: every old part is back, byte-exact."""
    target = tmp_path / "det.shp"
    L.write_vector(_frame(label=["negative"], geometry=[box(0, 0, 1, 1)]), target)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real, calls = os.replace, {"n": 0}

    def flaky(src, dst):
        if Path(dst).parent == tmp_path and Path(src).parent.name != "old":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(L.os, "replace", flaky)
    second = _frame(label=["negative"] * 2, geometry=[box(0, 0, 2, 2), box(5, 5, 6, 6)])
    with pytest.raises(OSError, match="disk full"):
        L.write_vector(second, target)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
