"""Writing rasters through rasterio: tiled, compressed GeoTIFFs, renamed into place whole."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio

from geodetect.atomic import atomic_path
from geodetect.errors import InputError
from geodetect.raster import Grid, raster_errors


def _profile(grid: Grid, count: int, dtype: np.dtype, nodata: float | None, compress: str) -> dict:
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": compress,
        "BIGTIFF": "IF_SAFER",
    }
    if compress.lower() in ("deflate", "lzw", "zstd"):
        profile["predictor"] = 3 if dtype.kind == "f" else 2
    return profile


def write_raster(
    path: str | Path,
    array: np.ndarray,
    grid: Grid,
    nodata: float | None = None,
    compress: str = "deflate",
) -> Path:
    """Write (C, H, W) or (H, W) as a tiled GeoTIFF, atomically. Bool arrays become uint8."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (grid.height, grid.width):
        raise InputError(
            f"{path}: array shape {np.shape(array)} does not match grid {grid.height}×{grid.width}"
        )
    with raster_writer(path, grid, arr.shape[0], arr.dtype, nodata, compress) as dst:
        dst.write(arr)
    return Path(path)


@contextlib.contextmanager
def raster_writer(
    path: str | Path,
    grid: Grid,
    count: int,
    dtype: np.dtype | str,
    nodata: float | None = None,
    compress: str = "deflate",
) -> Iterator[rasterio.io.DatasetWriter]:
    """An open tiled GeoTIFF for windowed writes (`dst.write(arr, window=w)`); renamed into
    place only when the block exits cleanly, so a killed writer leaves no file."""
    profile = _profile(grid, count, np.dtype(dtype), nodata, compress)
    with atomic_path(path) as tmp:
        with raster_errors(path), rasterio.open(tmp, "w", **profile) as dst:
            yield dst
