"""infer --aoi and --mosaic, and scenes that share a file name.

A stand-in network finds the painted cars exactly (the red blobs of each tile, as boxes), so
these tests check the tiling, clipping, seam and merge logic without training a model.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import rasterio
import shapely
from _painted import CRS, GSD, ORIGIN, paint
from affine import Affine
from scipy import ndimage

from geodetect import geometry
from geodetect.cli import main
from geodetect.detection import Detector
from geodetect.inference import infer
from geodetect.labels import read_vector, write_vector
from geodetect.modelinfo import ModelInfo

# infer() loads its detector in inference; tiles run in detection; scenes are planned in tiling
infer_mod = importlib.import_module("geodetect.inference")
detection_mod = importlib.import_module("geodetect.detection")
tiling_mod = importlib.import_module("geodetect.tiling")
META = {"gsd": GSD, "bands": [1, 2, 3], "classes": ["car"], "arch": {"multiple": 32}}
TILE, OVERLAP = 96, 40  # cars are at most 32 px long: whole in some tile's core


def _blobs(x: np.ndarray) -> dict:
    """Boxes around the red blobs of one normalised tile (C, H, W): what a perfect car
    detector would say, cut where the tile or the scene cuts the car."""
    red = (x[0] - x[1]) > 0.3
    lab, _ = ndimage.label(red)
    corners = []
    for sl in ndimage.find_objects(lab):
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        corners.append([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    n = len(corners)
    boxes = geometry.boxes_from_corners(np.asarray(corners, float).reshape(n, 4, 2), True)[0]
    return {
        "boxes": np.asarray(boxes).reshape(n, 5),
        "scores": np.full(n, 0.9),
        "classes": np.zeros(n, np.int64),
        "headings": np.full(n, np.nan),
    }


@pytest.fixture
def model(tmp_path, monkeypatch):
    """A model file whose network is the blob finder; returns its path and the tile reads."""
    path = tmp_path / "blobs.pt"
    path.write_bytes(b"stand-in")
    reads: list[tuple[str, int, int]] = []
    info = ModelInfo.from_meta(META)
    monkeypatch.setattr(infer_mod, "load_detector", lambda *a, **k: Detector(None, info, "cpu", 4))
    monkeypatch.setattr(
        detection_mod, "_run_batch", lambda det, inputs, settings: [_blobs(x) for x in inputs]
    )
    from geodetect.raster import SceneReader

    original = SceneReader.read

    def counted(self, window):
        reads.append((self.path, int(window.col_off), int(window.row_off)))
        return original(self, window)

    monkeypatch.setattr(SceneReader, "read", counted)
    return path, reads


def _write(path, img: np.ndarray, col0: int = 0, row0: int = 0) -> str:
    """Pixels of a painted surface, placed at (col0, row0) of the surface's grid."""
    tf = Affine(GSD, 0, ORIGIN[0] + col0 * GSD, 0, -GSD, ORIGIN[1] - row0 * GSD)
    _, h, w = img.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=CRS, transform=tf
    ) as dst:
        dst.write(img)
    return str(path)


def _cars(*boxes: tuple) -> np.ndarray:
    return np.array([[*b, 90.0] for b in boxes], float)  # (cx, cy, length, width), along x


def _centres_px(gdf) -> np.ndarray:
    """Detection centres as surface pixels."""
    c = gdf.geometry.centroid
    return np.stack([(c.x - ORIGIN[0]) / GSD, (ORIGIN[1] - c.y) / GSD], axis=1)


# ------------------------------------------------------------------ area of interest


def test_aoi_reads_only_tiles_in_it_and_keeps_centres_inside(model, tmp_path, monkeypatch):
    path, reads = model
    cars = _cars((40, 40, 30, 12), (70, 200, 30, 12), (200, 60, 30, 12), (110, 150, 30, 12))
    scene = _write(tmp_path / "s.tif", paint(256, cars, np.full(len(cars), np.nan)))
    # the area: the left 100 px (in WGS 84, so it is reprojected); car 4 (cx 110) has its
    # left end inside but its centre outside
    left = shapely.box(ORIGIN[0], ORIGIN[1] - 256 * GSD, ORIGIN[0] + 100 * GSD, ORIGIN[1])
    import geopandas as gpd

    aoi = write_vector(
        gpd.GeoDataFrame({"name": ["a"]}, geometry=[left], crs=CRS).to_crs(4326),
        tmp_path / "aoi.geojson",
    )
    full = infer(path, [scene], out=tmp_path / "all.gpkg", tile=TILE, overlap=OVERLAP)
    n_all = len(reads)
    reads.clear()
    # a second scene east of the area: neither its tiles nor its statistics are read
    far = _write(tmp_path / "far.tif", paint(128, cars[:1], np.array([np.nan])), col0=1000)
    sampled = []
    stats = tiling_mod._scene_stats
    monkeypatch.setattr(
        tiling_mod, "_scene_stats", lambda image, info: sampled.append(image) or stats(image, info)
    )
    argv = ["infer", str(path), scene, far, "--aoi", str(aoi), "--tile", str(TILE)]
    assert main([*argv, "--overlap", str(OVERLAP), "--out", str(tmp_path / "in.gpkg")]) == 0
    assert sampled == [scene]
    assert len(read_vector(full)) == 4
    kept = read_vector(tmp_path / "in.gpkg")
    np.testing.assert_allclose(np.sort(_centres_px(kept), axis=0), [[40, 40], [70, 200]], atol=1e-6)
    # no tile was read that does not meet the area (tile starts every TILE - OVERLAP px)
    assert 0 < len(reads) < n_all
    assert all(col < 100 and image == scene for image, col, _ in reads)


def test_aoi_outside_every_scene_is_one_line(model, tmp_path, capsys):
    import geopandas as gpd

    path, _ = model
    scene = _write(tmp_path / "s.tif", paint(128, _cars((40, 40, 30, 12)), np.array([np.nan])))
    far = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs=4326)
    aoi = write_vector(far, tmp_path / "far.gpkg")
    out = tmp_path / "d.gpkg"
    assert main(["infer", str(path), scene, "--aoi", str(aoi), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "does not overlap" in err
    assert not out.exists()


def test_plugin_region_goes_through_the_aoi(model, tmp_path):
    """The napari "Detect in view" job: a rectangle in the scene's CRS, centres kept inside."""
    from geodetect.jobs import _detect

    path, reads = model
    cars = _cars((40, 40, 30, 12), (200, 200, 30, 12))
    scene = _write(tmp_path / "s.tif", paint(256, cars, np.full(2, np.nan)))
    bounds = [ORIGIN[0], ORIGIN[1] - 100 * GSD, ORIGIN[0] + 100 * GSD, ORIGIN[1]]
    out = tmp_path / "view.gpkg"

    class Emit:
        def progress(self, *a, **k):
            pass

    params = {"model": str(path), "image": scene, "out": str(out)}
    _detect({**params, "region": {"bounds": bounds, "crs": CRS}}, Emit())
    np.testing.assert_allclose(_centres_px(read_vector(out)), [[40, 40]], atol=1e-6)
    far = [ORIGIN[0] - 100, ORIGIN[1] + 100, ORIGIN[0] - 50, ORIGIN[1] + 150]
    _detect({**params, "region": {"bounds": far, "crs": CRS}}, Emit())  # the view off the scene
    assert len(read_vector(out)) == 0


# ------------------------------------------------------------------ mosaic


@pytest.fixture
def abutting(tmp_path):
    """A 192 x 160 px surface cut into two files at column 96, one car across the cut."""
    cars = _cars((95, 50, 30, 12), (40, 120, 30, 12), (150, 120, 30, 12))
    img = paint(192, cars, np.full(3, np.nan))[:, :160]
    left = _write(tmp_path / "left.tif", np.ascontiguousarray(img[:, :, :96]))
    right = _write(tmp_path / "right.tif", np.ascontiguousarray(img[:, :, 96:]), col0=96)
    return left, right


def test_mosaic_finds_a_car_on_the_seam_once_whole(model, abutting, tmp_path):
    path, _ = model
    common = ["--tile", str(TILE), "--overlap", str(OVERLAP)]
    apart, whole = tmp_path / "apart.gpkg", tmp_path / "whole.gpkg"
    assert main(["infer", str(path), *abutting, "--out", str(apart), *common]) == 0
    assert main(["infer", str(path), *abutting, "--mosaic", "--out", str(whole), *common]) == 0
    # file by file: the seam car comes out as two halves
    a = read_vector(apart)
    seam = a[np.abs(_centres_px(a)[:, 1] - 50) < 1]
    assert len(seam) == 2 and (seam["length_m"] < 20 * GSD).all()
    # as one surface: once, whole, named after the file holding its centre
    w = read_vector(whole).sort_values("image").reset_index(drop=True)
    assert len(w) == 3
    c = _centres_px(w)
    on_seam = np.abs(c[:, 1] - 50) < 1
    assert on_seam.sum() == 1
    np.testing.assert_allclose(c[on_seam][0], [95, 50], atol=1e-6)
    assert w.loc[on_seam, "length_m"].iloc[0] == pytest.approx(30 * GSD)
    assert w.loc[on_seam, "width_m"].iloc[0] == pytest.approx(12 * GSD)
    assert list(w["image"]) == ["left.tif", "left.tif", "right.tif"]
    assert not (tmp_path / "whole.gpkg.parts").exists()  # the VRT went with the parts


def test_mosaic_of_files_with_different_bands_is_one_line(model, abutting, tmp_path, capsys):
    path, _ = model
    with rasterio.open(abutting[1]) as src:
        profile, data = src.profile, src.read()
    profile.update(count=4)
    with rasterio.open(tmp_path / "four.tif", "w", **profile) as dst:
        dst.write(np.concatenate([data, data[:1]]))
    out = tmp_path / "d.gpkg"
    argv = ["infer", str(path), abutting[0], str(tmp_path / "four.tif"), "--mosaic"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "same bands" in err
    assert not out.exists()


def test_mosaic_across_two_crss_finds_an_object_in_both_files_once(model, tmp_path):
    """Files in different CRSs (a sheet in the next UTM zone) cannot share a VRT: they run
    one by one and `--mosaic` merges their detections across files in the output CRS."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    path, _ = model
    a = _write(tmp_path / "a.tif", paint(160, _cars((80, 80, 30, 12)), np.array([np.nan])))
    with rasterio.open(a) as src:
        zone34 = "EPSG:32634"  # 6 degrees west of its meridian: grid north turns ~4 degrees
        tf, w, h = calculate_default_transform(
            src.crs, zone34, src.width, src.height, *src.bounds, resolution=GSD
        )
        pixels = np.zeros((3, h, w), np.uint8)
        reproject(
            src.read(), pixels, src_transform=src.transform, src_crs=src.crs,
            dst_transform=tf, dst_crs=zone34, resampling=Resampling.nearest,
        )  # fmt: skip
        profile = {**src.profile, "crs": zone34, "transform": tf, "width": w, "height": h}
    b = str(tmp_path / "b.tif")
    with rasterio.open(b, "w", **profile) as dst:
        dst.write(pixels)
    common = {"tile": TILE, "overlap": OVERLAP}
    apart = read_vector(infer(path, [a, b], out=tmp_path / "apart.gpkg", **common))
    assert len(apart) == 2  # each file's own car: the files are not one surface
    whole = read_vector(infer(path, [a, b], out=tmp_path / "w.gpkg", mosaic=True, **common))
    assert len(whole) == 1 and whole.crs == rasterio.crs.CRS.from_string(CRS)
    np.testing.assert_allclose(_centres_px(whole)[0], [80, 80], atol=1.5)


# ------------------------------------------------------------------ scenes sharing a name


def test_scenes_with_one_file_name_are_not_merged_together(model, tmp_path):
    """Two dates of one place, both `TCI.tif` (as STAC assets are): each keeps its car."""
    path, _ = model
    cars = _cars((60, 60, 30, 12))
    img = paint(128, cars, np.array([np.nan]))
    a = _write((tmp_path / "d1").mkdir() or tmp_path / "d1" / "TCI.tif", img)
    img[:, 0, 0] = 77  # another scene (another checksum), same place
    b = _write((tmp_path / "d2").mkdir() or tmp_path / "d2" / "TCI.tif", img)
    out = infer(path, [a, b], out=tmp_path / "d.gpkg", tile=TILE, overlap=OVERLAP)
    d = read_vector(out)
    assert len(d) == 2 and list(d["image"]) == ["TCI.tif", "TCI.tif"]


def test_presigned_url_is_named_without_its_query(model, tmp_path):
    from _http import serve

    path, _ = model
    folder = tmp_path / "served"
    folder.mkdir()
    _write(folder / "b.tif", paint(128, _cars((60, 60, 30, 12)), np.array([np.nan])))
    with serve(folder) as base:
        url = f"{base}/b.tif?X-Amz-Signature=abc"
        out = infer(path, [url], out=tmp_path / "d.gpkg", tile=TILE, overlap=OVERLAP)
    assert list(read_vector(out)["image"]) == ["b.tif"]


def test_aoi_frames_follow_the_label_file_rules(tmp_path):
    """A GeoJSON without a crs member is pixels for a CRS-less scene (as label files are);
    an area with a CRS for a scene without one, or the reverse, is a CRSError."""
    import geopandas as gpd

    from geodetect.aoi import in_crs, load_area
    from geodetect.errors import CRSError

    plain = tmp_path / "px.geojson"
    plain.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
        '"geometry": {"type": "Polygon", "coordinates": [[[0,0],[10,0],[10,5],[0,5],[0,0]]]}}]}'
    )
    assert in_crs(load_area(plain), None).bounds == (0.0, 0.0, 10.0, 5.0)
    utm = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs=CRS)
    with pytest.raises(CRSError, match="the scene has none"):
        in_crs(load_area(write_vector(utm, tmp_path / "a.gpkg")), None)
    with pytest.raises(CRSError, match="has no CRS"):
        in_crs(load_area(gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)])), CRS)
