"""raster.py: opening (and refusing) files, grids, windows, resampled/warped reads."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _grids import UTM, utm_grid
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window

from geodetect.bandstats import sample_pixels
from geodetect.errors import InputError, RasterError
from geodetect.geotiff import write_raster
from geodetect.raster import Grid, SceneReader, open_raster, tile_windows, working_grid
from geodetect.tiling import even_tile


@pytest.fixture
def rgb(tmp_path: Path) -> tuple[Path, np.ndarray, Grid]:
    grid = utm_grid(200, 150)
    data = np.random.default_rng(0).integers(1, 255, (3, 150, 200)).astype(np.uint8)
    return write_raster(tmp_path / "rgb.tif", data, grid), data, grid


# ------------------------------------------------------------------------------ open


def test_geographic_gsd_in_metres(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(4326), Affine(1e-5, 0, 15.0, 0, -1e-5, 45.0), 100, 100)
    info = open_raster(write_raster(tmp_path / "g.tif", np.ones((1, 100, 100), np.uint8), grid))
    # 1e-5 deg: 0.79 m east-west and 1.11 m north-south at 45°N
    assert info.is_geographic and 0.9 < info.gsd < 1.0


def test_feet_crs_gsd_in_metres(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(2263), Affine(2.0, 0, 1e6, 0, -2.0, 2e5), 20, 20)  # NY, US ft
    info = open_raster(write_raster(tmp_path / "ft.tif", np.ones((1, 20, 20), np.uint8), grid))
    assert info.gsd == pytest.approx(2 * 0.3048006, rel=1e-5)


# ------------------------------------------------------------------------------ bad files


def _tiff_header(width: int, height: int) -> bytes:
    """A minimal little-endian TIFF declaring a huge single-strip image with no data."""
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
            (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
            (279, 4, 1, 100)]  # fmt: skip
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def _bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "header_only": raw[:300],
        "wrong_magic": b"XXXX" + raw[4:],
        "zero_byte": b"",
        "not_raster": b"hello, this is text and not a tiff\n" * 20,
        "absurd_size": _tiff_header(2**31 - 1, 2**31 - 1),
        "absurd_strip": _tiff_header(3_000_000, 3_000_000),
    }
    out = {}
    for name, content in files.items():
        (tmp_path / f"{name}.tif").write_bytes(content)
        out[name] = tmp_path / f"{name}.tif"
    vrt = tmp_path / "dangling.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="10" rasterYSize="10"><VRTRasterBand dataType="Byte" band="1">'
        '<SimpleSource><SourceFilename relativeToVRT="1">gone.tif</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    out["dangling_vrt"] = vrt
    out["missing"] = tmp_path / "missing.tif"
    out["folder"] = tmp_path
    return out


BAD = ["truncated", "header_only", "wrong_magic", "zero_byte", "not_raster", "absurd_size",
       "absurd_strip", "dangling_vrt", "missing", "folder"]  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_corrupt_rasters_raise_raster_error_naming_the_file(tmp_path: Path, name: str) -> None:
    good = write_raster(
        tmp_path / "good.tif",
        np.random.default_rng(1).integers(0, 255, (3, 512, 512)).astype(np.uint8),
        utm_grid(512, 512),
    )
    path = _bad_files(tmp_path, good)[name]
    with pytest.raises(RasterError) as err:
        open_raster(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    with pytest.raises(RasterError):
        sample_pixels(path)


def test_truncated_file_fails_cleanly_at_read_time_too(tmp_path: Path) -> None:
    grid = utm_grid(1024, 1024)
    data = np.random.default_rng(2).integers(0, 255, (1, 1024, 1024)).astype(np.uint8)
    path = write_raster(tmp_path / "t.tif", data, grid)
    reader = SceneReader(path, grid)
    reader.read(Window(0, 0, 8, 8))  # opened while whole
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(RasterError, match="t.tif"):
        for win in tile_windows(1024, 1024, 256, 0):
            reader.read(win)
    reader.close()


# ------------------------------------------------------------------------------ windows


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"),
    [
        (1000, 700, 256, 32),
        (512, 512, 256, 0),
        (100, 50, 256, 64),
        (257, 1, 256, 255),
        (3, 900, 7, 3),
    ],
)
def test_tile_windows_cover_the_grid_exactly(
    width: int, height: int, tile: int, overlap: int
) -> None:
    wins = tile_windows(width, height, tile, overlap)
    hits = np.zeros((height, width), int)
    for w in wins:
        assert w.col_off >= 0 and w.row_off >= 0
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
        assert w.width == min(tile, width) and w.height == min(tile, height)
        hits[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (hits >= 1).all()
    steps = sorted({w.col_off for w in wins})
    assert all(b - a <= tile - overlap for a, b in zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize(
    ("width", "height", "tile", "expect"),
    [(4096, 4096, 1024, 928), (1100, 1100, 1024, 640), (1024, 1024, 1024, 1024),
     (300, 200, 1024, 320), (4096, 1000, 1024, 1024), (16384, 16384, 1024, 992),
     (5000, 3000, 512, 512), (700, 700, 256, 256)],
)  # fmt: skip
def test_even_tile_runs_fewer_pixels_with_the_same_tiles(
    width: int, height: int, tile: int, expect: int
) -> None:
    """The evened tile is a multiple of the stride, no larger, needs no more tiles, keeps at
    least the overlap between neighbours, and still covers the grid."""
    overlap, multiple = 128, 32
    even = even_tile(width, height, tile, overlap, multiple)
    assert even == expect and even % multiple == 0 and even <= tile
    full = tile_windows(width, height, min(tile, max(width, height)), overlap)
    wins = tile_windows(width, height, even, overlap)
    assert len(wins) <= len(full)
    hits = np.zeros((height, width), np.int8)
    for w in wins:
        hits[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = 1
    assert hits.all()
    for axis in ("col_off", "row_off"):
        starts = sorted({getattr(w, axis) for w in wins})
        assert all(b - a <= even - overlap for a, b in zip(starts, starts[1:], strict=False))


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (64, 64), (64, -1)])
def test_tile_windows_bad_arguments(tile: int, overlap: int) -> None:
    with pytest.raises(InputError):
        tile_windows(100, 100, tile, overlap)


# ------------------------------------------------------------------------------ reading


def test_native_read_is_exact_and_boundless(rgb: tuple[Path, np.ndarray, Grid]) -> None:
    path, data, grid = rgb
    info = open_raster(path)
    assert working_grid(info) == info.grid == working_grid(info, 0.5)
    with SceneReader(path, working_grid(info)) as reader:
        block, valid = reader.read(Window(-10, 140, 64, 32))
    assert block.dtype == np.float32 and block.shape == (3, 32, 64) and valid.shape == (32, 64)
    np.testing.assert_array_equal(block[:, :10, 10:], data[:, 140:150, 0:54])
    assert valid[:10, 10:].all() and not valid[:, :10].any() and not valid[10:].any()
    assert (block[:, ~valid] == 0).all()


def test_reader_subgrid_and_band_selection(rgb: tuple[Path, np.ndarray, Grid]) -> None:
    path, data, grid = rgb
    sub = grid.window_grid(Window(20, 30, 50, 40))
    block, valid = SceneReader(path, sub, bands=[3, 1]).read(Window(0, 0, 50, 40))
    np.testing.assert_array_equal(block, data[[2, 0], 30:70, 20:70])
    assert valid.all()


def test_reader_fast_path_matches_the_masked_read(tmp_path: Path) -> None:
    """Integer bands without nodata skip the mask read and the copies; the result must be
    what the masked path gives, and a nodata value or NaN must still mark pixels invalid."""
    grid = utm_grid(96, 80)
    data = np.random.default_rng(1).integers(1, 250, (3, 80, 96)).astype(np.uint8)
    plain = write_raster(tmp_path / "plain.tif", data, grid)
    masked = write_raster(tmp_path / "masked.tif", data, grid, nodata=0)  # no 0 in the data
    win = Window(8, 4, 64, 64)
    with SceneReader(plain, grid) as a, SceneReader(masked, grid) as b:
        (x, vx), (y, vy) = a.read(win), b.read(win)
        assert a._all_valid and not b._all_valid  # the two paths are what is compared
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, data[:, 4:68, 8:72])
    assert vx.all() and vy.all() and x.dtype == np.float32 and x.flags.writeable
    holes = data.astype(np.float32)
    holes[:, 10, 20] = np.nan
    nan_path = write_raster(tmp_path / "nan.tif", holes, grid)
    with SceneReader(nan_path, grid) as c:
        z, vz = c.read(Window(0, 0, 96, 80))
    assert not c._all_valid and not vz[10, 20] and vz.sum() == 96 * 80 - 1 and z[0, 10, 20] == 0


def _bright_spot_scene(path: Path, grid: Grid, row: int, col: int) -> Path:
    data = np.zeros((1, grid.height, grid.width), np.float32)
    data[0, row - 2 : row + 3, col - 2 : col + 3] = 100.0
    return write_raster(path, data, grid)


def _spot_map_xy(block: np.ndarray, grid: Grid) -> tuple[float, float]:
    """Intensity-weighted centre of the spot, in map coordinates."""
    w = np.clip(block[0], 0, None)
    rows, cols = np.indices(w.shape)
    r = (w * (rows + 0.5)).sum() / w.sum()
    c = (w * (cols + 0.5)).sum() / w.sum()
    return grid.transform @ (c, r)


@pytest.mark.parametrize("gsd", [0.7, 1.3, 0.35])
def test_resampled_read_keeps_georeferencing(tmp_path: Path, gsd: float) -> None:
    grid = utm_grid(240, 160)  # 0.5 m
    path = _bright_spot_scene(tmp_path / "spot.tif", grid, row=57, col=131)
    spot = grid.transform @ (131.5, 57.5)
    wg = working_grid(open_raster(path), gsd)
    assert wg.res == pytest.approx((gsd, gsd)) and wg.crs == UTM
    assert wg.width == pytest.approx(240 * 0.5 / gsd, abs=1)
    block, valid = SceneReader(path, wg).read(Window(0, 0, wg.width, wg.height))
    x, y = _spot_map_xy(block, wg)
    assert abs(x - spot[0]) < 0.25 * gsd and abs(y - spot[1]) < 0.25 * gsd
    assert valid[: wg.height - 1, : wg.width - 1].all()


def test_geographic_scene_gets_a_utm_grid_and_content_lands_right(tmp_path: Path) -> None:
    geo = Grid(CRS.from_epsg(4326), Affine(1e-5, 0, 15.0, 0, -1e-5, 45.001), 200, 160)
    path = _bright_spot_scene(tmp_path / "wgs84.tif", geo, row=80, col=60)
    lon, lat = geo.transform @ (60.5, 80.5)
    info = open_raster(path)
    wg = working_grid(info, 1.0)
    assert wg.crs == UTM and wg.res == pytest.approx((1.0, 1.0))
    assert wg.transform.b == 0 and wg.transform.d == 0  # north-up
    block, valid = SceneReader(path, wg).read(Window(0, 0, wg.width, wg.height))
    assert valid.mean() > 0.8
    x, y = _spot_map_xy(block, wg)
    ex, ey = Transformer.from_crs(4326, 32633, always_xy=True).transform(lon, lat)
    assert abs(x - ex) < 0.5 and abs(y - ey) < 0.5


def test_png_without_georeferencing_works_in_pixel_frame(tmp_path: Path) -> None:
    data = np.zeros((3, 60, 80), np.uint8)
    data[:, 20:24, 40:44] = 200
    path = tmp_path / "photo.png"
    with rasterio.open(path, "w", driver="PNG", width=80, height=60, count=3, dtype="uint8") as d:
        d.write(data)
    info = open_raster(path)
    assert info.grid.crs is None and info.grid.transform == Affine.identity()
    assert info.gsd == 1.0 and not info.georeferenced
    native, valid = SceneReader(path, working_grid(info)).read(Window(0, 0, 80, 60))
    np.testing.assert_array_equal(native, data)
    assert valid.all()
    half = working_grid(info, 2.0)
    assert (half.width, half.height, half.crs) == (40, 30, None)
    small, valid = SceneReader(path, half, resampling="average").read(Window(0, 0, 40, 30))
    assert valid.all()
    assert np.unravel_index(small[0].argmax(), small[0].shape) == (10, 20)
    np.testing.assert_allclose(small[:, 10:12, 20:22], 200)


def test_nodata_and_nan_are_invalid(tmp_path: Path) -> None:
    grid = utm_grid(64, 64)
    u16 = np.full((2, 64, 64), 1000, np.uint16)
    u16[:, :, :16] = 0
    p16 = write_raster(tmp_path / "u16.tif", u16, grid, nodata=0)
    block, valid = SceneReader(p16, grid).read(Window(0, 0, 64, 64))
    assert not valid[:, :16].any() and valid[:, 16:].all()
    assert (block[:, valid] == 1000).all() and (block[:, ~valid] == 0).all()
    f32 = np.ones((1, 64, 64), np.float32)
    f32[0, 10:20, 10:20] = np.nan
    pf = write_raster(tmp_path / "f32.tif", f32, grid)
    block, valid = SceneReader(pf, grid).read(Window(0, 0, 64, 64))
    assert valid.sum() == 64 * 64 - 100 and np.isfinite(block).all()
    # resampled reads keep nodata out too
    wg = working_grid(open_raster(p16), 0.8)
    block, valid = SceneReader(p16, wg).read(Window(0, 0, wg.width, wg.height))
    assert (block[:, valid] > 900).all() and not valid[:, :9].any()
    values = sample_pixels(p16)
    assert values.shape == (2, 64 * 48) and (values == 1000).all()


def test_internal_mask_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "masked.tif"
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    profile = dict(driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs=UTM,
                   transform=utm_grid(32, 32).transform)  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as d:
        d.write(np.full((1, 32, 32), 7, np.uint8))
        d.write_mask(mask)
    info = open_raster(path)
    assert info.has_mask
    _, valid = SceneReader(path, info.grid).read(Window(0, 0, 32, 32))
    np.testing.assert_array_equal(valid, mask > 0)


# ------------------------------------------------------------------------------ processes


def _read_in_child(reader: SceneReader) -> np.ndarray:
    return reader.read(Window(5, 5, 20, 20))[0]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_pickles_and_reads_the_same_in_workers(
    rgb: tuple[Path, np.ndarray, Grid], method: str
) -> None:
    path, data, grid = rgb
    reader = SceneReader(path, working_grid(open_raster(path), 0.9))
    expected = reader.read(Window(5, 5, 20, 20))[0]  # opened in the parent before forking
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read(Window(5, 5, 20, 20))[0], expected)
    with mp.get_context(method).Pool(1) as pool:
        got = pool.apply(_read_in_child, (reader,))
    np.testing.assert_array_equal(got, expected)


def test_reader_rejects_bad_band_and_resampling(rgb: tuple[Path, np.ndarray, Grid]) -> None:
    path, _, grid = rgb
    with pytest.raises(RasterError, match="no band 4"):
        SceneReader(path, grid, bands=[4]).read(Window(0, 0, 4, 4))
    with pytest.raises(InputError):
        SceneReader(path, grid, resampling="magic")
