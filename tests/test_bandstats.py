"""bandstats: the pixel sample colour statistics come from (overviews, stratified windows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from _grids import utm_grid
from affine import Affine

from geodetect.bandstats import sample_pixels
from geodetect.geotiff import write_raster
from geodetect.raster import open_raster


def test_sample_pixels_from_overviews_and_windows(tmp_path: Path) -> None:
    grid = utm_grid(1024, 1024)
    data = np.random.default_rng(3).integers(1, 60000, (1, 1024, 1024)).astype(np.uint16)
    data[:, :, :512] = 0  # nodata half
    plain = write_raster(tmp_path / "plain.tif", data, grid, nodata=0)
    a = sample_pixels(plain, max_pixels=5000)
    b = sample_pixels(plain, max_pixels=5000)
    np.testing.assert_array_equal(a, b)  # deterministic
    assert a.dtype == np.float32 and 0 < a.shape[1] <= 5000 and (a > 0).all()
    with rasterio.open(plain, "r+") as ds:
        ds.build_overviews([2, 4, 8, 16])
    assert open_raster(plain).overviews == (2, 4, 8, 16)
    c = sample_pixels(plain, max_pixels=10_000)
    assert 0 < c.shape[1] <= 10_000 and (c > 0).all()


def test_sample_pixels_percentiles_match_the_whole_scene(tmp_path: Path) -> None:
    """Band statistics come from the sample: on a scene of ground and 30 big roofs of rising
    brightness, its 98th percentile must stay near the whole scene's whatever the seed (a
    few large random windows missed it by up to 41 levels, a fifth of the range)."""
    side = 2048
    data = np.full((1, side, side), 60, np.uint8)
    rng = np.random.default_rng(5)
    data += rng.integers(0, 40, data.shape, dtype=np.uint8)  # ground: 60-99
    roofs = zip(rng.integers(0, side - 100, (30, 2)), np.linspace(120, 250, 30), strict=True)
    for (r, c), v in roofs:
        data[:, r : r + 100, c : c + 100] = int(v)  # roofs of 100²: 7 % of the scene
    path = write_raster(tmp_path / "roofs.tif", data, utm_grid(side, side))
    truth = np.percentile(data.reshape(-1), 98)
    errors = [
        abs(np.percentile(sample_pixels(path, max_pixels=200_000, seed=s), 98) - truth)
        for s in range(8)
    ]
    assert np.mean(errors) < 10 and max(errors) < 25, errors


def test_sample_pixels_finds_the_data_of_a_mostly_nodata_scene(tmp_path):
    """Random windows miss a small island of data in a big nodata collar; the decimated
    whole-extent read still finds it (mosaics look like this)."""
    path = tmp_path / "collar.tif"
    side = 4096
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1,
                       dtype="uint8", nodata=0, tiled=True, compress="deflate",
                       crs="EPSG:32633", transform=Affine(1, 0, 0, 0, -1, 0)) as dst:  # fmt: skip
        dst.write(
            np.full((1, 64, 64), 77, np.uint8), window=rasterio.windows.Window(100, 3000, 64, 64)
        )
    values = sample_pixels(path, [1], max_pixels=20_000, seed=0)
    assert values.shape[1] > 0 and (values == 77).all()


def test_sample_pixels_reads_the_same_with_threads(tmp_path: Path, monkeypatch) -> None:
    """The windows are read by threads with a handle each; the sample must be the serial one
    (same windows, same order), with and without a nodata mask."""
    from geodetect import bandstats

    data = np.random.default_rng(4).integers(0, 250, (3, 1536, 1536)).astype(np.uint8)
    for nodata in (None, 0):
        path = write_raster(tmp_path / f"s{nodata}.tif", data, utm_grid(1536, 1536), nodata=nodata)
        threaded = sample_pixels(path, max_pixels=50_000)
        monkeypatch.setattr(bandstats, "READ_THREADS", 1)
        serial = sample_pixels(path, max_pixels=50_000)
        monkeypatch.undo()
        np.testing.assert_array_equal(threaded, serial)
        assert serial.shape == (3, 50_000) and (nodata is None or (serial > 0).all())
