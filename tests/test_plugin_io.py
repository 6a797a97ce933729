"""napari plugin I/O: coordinate convention, readers, manifest, writer (RELIABILITY 8 and 15)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geodetect.geotiff import write_raster
from geodetect.plugin import _coords as co
from geodetect.plugin import _reader as rd
from geodetect.raster import Grid

UTM = CRS.from_epsg(32633)
NORTH_UP = Affine(0.25, 0, 500_123.0, 0, -0.25, 5_400_456.0)
ROTATED = (
    Affine.translation(500_123.0, 5_400_456.0) @ Affine.rotation(-30) @ Affine.scale(0.3, -0.3)
)


def _tif(path: Path, transform: Affine, crs=UTM, h: int = 48, w: int = 64, bands: int = 3) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (bands, h, w), dtype=np.uint8)
    return write_raster(path, data, Grid(crs, transform, w, h))


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north-up", "rotated"])
def test_pixel_map_world_round_trip(transform: Affine) -> None:
    """pixel -> map -> napari world -> map -> pixel is exact (1e-6 px), image affine agrees."""
    rng = np.random.default_rng(1)
    px = rng.uniform(-2, 66, (200, 2))
    xy = co.pixel_to_map(px, transform)
    rc = co.map_to_world(xy, True)
    back = co.map_to_pixel(co.world_to_map(rc, True), transform)
    np.testing.assert_allclose(back, px, atol=1e-6)
    # the image layer affine maps data index (row, col) = (y - ½, x - ½) to the same world point
    m = co.image_affine(transform, True)
    data = np.column_stack([px[:, 1] - 0.5, px[:, 0] - 0.5, np.ones(len(px))])
    np.testing.assert_allclose((data @ m.T)[:, :2], rc, atol=1e-9 * 5e6)
    # north is up on screen: moving north decreases the world row
    north = co.map_to_world(np.array([[0.0, 0.0], [0.0, 1.0]]), True)
    assert north[1, 0] < north[0, 0]


def test_pixel_frame_keeps_rows_down() -> None:
    """A scene without CRS is shown in pixels with row 0 at the top."""
    m = co.image_affine(Affine.identity(), False)
    np.testing.assert_allclose(m @ [0, 0, 1], [0.5, 0.5, 1])
    np.testing.assert_allclose(m @ [10, 3, 1], [10.5, 3.5, 1])
    assert co.image_placement(Affine.identity(), False) == {
        "scale": (1.0, 1.0),
        "translate": (0.5, 0.5),
    }


def test_readers_refuse_foreign_files(tmp_path: Path) -> None:
    """None (never an exception) for things that are not scenes or clouds."""
    (tmp_path / "fake.tif").write_text("not a tiff")
    (tmp_path / "empty.laz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "cut.las").write_bytes(b"LASF" + b"\0" * 50)
    for name in ("fake.tif", "empty.laz", "notes.txt", "cut.las", "missing.tif"):
        assert rd.get_reader(str(tmp_path / name)) is None, name
    good = _tif(tmp_path / "good.tif", NORTH_UP)
    assert rd.get_reader([str(good), str(tmp_path / "fake.tif")]) is None
    assert rd.get_reader(str(good)) is rd.read_paths


def test_scene_layer_placement(tmp_path: Path) -> None:
    """scale/translate from a north-up transform; affine for a rotated one; CRS in metadata."""
    data, kw, kind = rd.scene_layer(str(_tif(tmp_path / "n.tif", NORTH_UP)))
    assert kind == "image" and kw["rgb"] and data.shape == (48, 64, 3)
    np.testing.assert_allclose(kw["scale"], (0.25, 0.25))
    np.testing.assert_allclose(kw["translate"], (-5_400_456.0 + 0.125, 500_123.0 + 0.125))
    meta = kw["metadata"][co.KEY]
    assert CRS.from_wkt(meta["crs"]) == UTM and meta["kind"] == "scene"
    assert Affine(*meta["transform"]) == NORTH_UP
    _, kw, _ = rd.scene_layer(str(_tif(tmp_path / "r.tif", ROTATED)))
    assert "affine" in kw and "scale" not in kw
    np.testing.assert_allclose(kw["affine"], co.image_affine(ROTATED, True))


def test_large_scene_is_lazy_multiscale(tmp_path: Path, monkeypatch) -> None:
    """Above the eager limit a scene becomes a pyramid of window readers, not a full array."""
    path = _tif(tmp_path / "big.tif", NORTH_UP, h=1500, w=1100, bands=1)
    full, _, _ = rd.scene_layer(str(path))
    monkeypatch.setattr(rd, "EAGER_PIXELS", 1000)
    monkeypatch.setattr(rd, "MIN_LEVEL_SIDE", 200)
    levels, kw, _ = rd.scene_layer(str(path))
    assert kw["multiscale"] and isinstance(levels, list) and len(levels) == 3
    assert [lv.shape for lv in levels] == [(1500, 1100), (750, 550), (375, 275)]
    assert all(isinstance(lv, rd.WindowArray) for lv in levels)
    np.testing.assert_array_equal(levels[0][100:120, 1050:1100], full[100:120, 1050:1100])
    np.testing.assert_array_equal(levels[0][7, 3:9], full[7, 3:9])
    assert levels[1][:, :].shape == (750, 550)


def test_cloud_layers_line_up_with_the_scene(sample_small) -> None:
    """Points at world (−y, x), height as a feature; DSM/nDSM on the sibling scene's grid."""
    from geodetect.pointcloud import read_points
    from geodetect.raster import open_raster

    layers = rd.read_paths(str(sample_small.cloud))
    kinds = [(k["name"], t) for _, k, t in layers]
    assert kinds == [("scene DSM", "image"), ("scene NDSM", "image"), ("scene points", "points")]
    grid = open_raster(sample_small.image).grid
    dsm, kw, _ = layers[0]
    assert dsm.shape == (grid.height, grid.width)
    assert np.nanmax(layers[1][0]) > 1.0  # objects stand above ground
    scene = rd.scene_layer(str(sample_small.image))[1]
    np.testing.assert_allclose(kw["translate"], scene["translate"])
    pts, kw, _ = layers[2]
    xyz = read_points(sample_small.cloud, max_points=rd.DISPLAY_POINTS)["xyz"]
    assert pts.shape[1] == 2  # 2-D: no z slider that shows a 1 m slice (issue 12.12)
    world = pts + np.asarray(kw["translate"])
    np.testing.assert_allclose(world, co.map_to_world(xyz[:, :2], True), atol=1e-6)
    np.testing.assert_allclose(kw["features"]["z"], xyz[:, 2])
    assert np.abs(pts).max() < 1e4  # small data coordinates: float32 GPU buffers


@pytest.mark.gui
def test_cloud_dems_land_on_the_open_scene_grid(make_napari_viewer, sample_small, tmp_path) -> None:
    """Issue 12.12: without a same-named scene the DSM/nDSM had their own 0.87 m grid."""
    import shutil

    from geodetect.raster import open_raster

    image = Path(shutil.copy(sample_small.image, tmp_path / "ortho.tif"))
    cloud = Path(shutil.copy(sample_small.cloud, tmp_path / "lidar.laz"))
    viewer = make_napari_viewer()
    viewer.open(str(image), plugin="geodetect")
    viewer.open(str(cloud), plugin="geodetect")
    grid = open_raster(image).grid
    dsm = viewer.layers["lidar DSM"]
    assert dsm.data.shape == (grid.height, grid.width)
    np.testing.assert_allclose(dsm.translate, viewer.layers["ortho"].translate)
    np.testing.assert_allclose(dsm.scale, viewer.layers["ortho"].scale)
    assert viewer.dims.ndim == 2


def test_manifest_validates_and_imports() -> None:
    """`npe2 validate --imports` equivalent: the manifest parses and every command imports."""
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("geodetect")
    pm.validate_imports()
    contributions = pm.contributions
    assert {r.command for r in contributions.readers} == {"geodetect.get_reader"}
    assert contributions.writers and contributions.widgets and contributions.sample_data


@pytest.mark.gui
@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north-up", "rotated"])
def test_opened_layers_map_world_to_pixels(make_napari_viewer, tmp_path: Path, transform) -> None:
    """Through napari itself: world <-> layer data <-> pixel <-> map within 1e-6 px."""
    viewer = make_napari_viewer()
    path = _tif(tmp_path / "s.tif", transform)
    (layer,) = viewer.open(str(path), plugin="geodetect")
    rng = np.random.default_rng(2)
    px = np.vstack([rng.uniform(0, 64, (50, 2)), [[0, 0], [64, 48], [64, 0], [0, 48]]])
    world = co.map_to_world(co.pixel_to_map(px, transform), True)
    for (x, y), w in zip(px, world, strict=True):
        np.testing.assert_allclose(layer.world_to_data(w), (y - 0.5, x - 0.5), atol=1e-6)
        np.testing.assert_allclose(layer.data_to_world((y - 0.5, x - 0.5)), w, atol=1e-6 * 0.25)
