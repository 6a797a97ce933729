"""geotiff: tiled GeoTIFFs written atomically, read back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from _grids import UTM, utm_grid
from affine import Affine

from geodetect.errors import InputError
from geodetect.geotiff import write_raster
from geodetect.raster import Grid, open_raster


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_write_then_open_keeps_grid_dtype_and_values(tmp_path: Path, dtype: str) -> None:
    grid = utm_grid(64, 48)
    data = (np.arange(2 * 48 * 64).reshape(2, 48, 64) % 1000).astype(dtype)
    path = write_raster(tmp_path / "s.tif", data, grid, nodata=0)
    info = open_raster(path)
    assert (info.count, info.dtype, info.nodata) == (2, dtype, 0.0)
    assert info.grid.crs == UTM and info.grid.transform == grid.transform
    assert (info.grid.width, info.grid.height) == (64, 48)
    assert info.gsd == pytest.approx(0.5) and info.georeferenced and not info.is_geographic
    with rasterio.open(path) as ds:
        assert ds.profile["tiled"] and ds.compression.name == "deflate"
        np.testing.assert_array_equal(ds.read(), data)
    assert [p.name for p in tmp_path.iterdir()] == ["s.tif"]  # no temp files left


def test_write_2d_and_crs_less(tmp_path: Path) -> None:
    grid = Grid(None, Affine.identity(), 40, 30)
    path = write_raster(tmp_path / "plain.tif", np.ones((30, 40), np.float32), grid)
    info = open_raster(path)
    assert info.grid.crs is None and info.grid.transform == Affine.identity()
    assert not info.georeferenced and info.gsd == 1.0 and info.count == 1


def test_write_shape_mismatch_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        write_raster(tmp_path / "x.tif", np.ones((3, 10, 10)), utm_grid(11, 10))
    assert list(tmp_path.iterdir()) == []
