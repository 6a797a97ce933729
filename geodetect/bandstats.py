"""The pixel sample that band (colour) statistics are taken from, read through rasterio.

From the coarsest overview that still holds enough pixels, else from small windows, one at a
random place in each cell of a regular grid over the scene (DESIGN.md, colour statistics: a
few large random windows once put a scene's 98th percentile on one bright roof).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from geodetect.raster import all_valid, check_file, raster_errors
from geodetect.remote import gdal_path

READ_THREADS = 4  # at most; GDAL inflates blocks outside the GIL


def sample_pixels(
    path: str | Path, bands: list[int] | None = None, max_pixels: int = 200_000, seed: int = 0
) -> np.ndarray:
    """Valid pixel values (C, N) float32 for band statistics, N <= max_pixels.

    From the coarsest overview that still holds max_pixels pixels when the file has overviews,
    else from seeded random windows; a small scene is read whole. Deterministic per seed.
    """
    check_file(path)
    rng = np.random.default_rng(seed)
    with raster_errors(path), rasterio.open(gdal_path(path)) as ds:
        bands = list(bands) if bands else list(range(1, ds.count + 1))
        if ds.width * ds.height <= max_pixels:
            values = _valid_values(ds, bands, None, None)
        elif ds.overviews(bands[0]):
            values = _valid_values(ds, bands, None, _overview_shape(ds, bands[0], max_pixels))
        else:
            values = _windows_values(path, bands, _sample_windows(ds, max_pixels, rng))
            if values.shape[1] < max_pixels // 20:  # mostly nodata (a mosaic's collar)
                values = _valid_values(ds, bands, None, _decimated_shape(ds, 4 * max_pixels))
    if values.shape[1] > max_pixels:
        values = values[:, np.sort(rng.choice(values.shape[1], max_pixels, replace=False))]
    return values


def _windows_values(path: str | Path, bands: list[int], windows: list[Window]) -> np.ndarray:
    """Valid values of the windows, in their order, read by a few threads with a handle each.

    The windows touch most of a scene's blocks, so this is a decompression of the whole scene;
    GDAL releases the GIL while it inflates, and two threads halve it (4096²: 0.24 → 0.13 s).
    """
    n = max(1, min(READ_THREADS, os.cpu_count() or 1, len(windows) // 16))
    chunks = [windows[i * len(windows) // n : (i + 1) * len(windows) // n] for i in range(n)]

    def read(chunk: list[Window]) -> list[np.ndarray]:
        with raster_errors(path), rasterio.open(gdal_path(path)) as ds:
            return [_valid_values(ds, bands, w, None) for w in chunk]

    with ThreadPoolExecutor(n) as pool:
        parts = [v for chunk in pool.map(read, chunks) for v in chunk]
    return np.concatenate(parts, axis=1)


def _overview_shape(ds: rasterio.io.DatasetReader, band: int, max_pixels: int) -> tuple[int, int]:
    shapes = [(math.ceil(ds.height / f), math.ceil(ds.width / f)) for f in ds.overviews(band)]
    adequate = [s for s in shapes if s[0] * s[1] >= max_pixels]
    return min(adequate, key=lambda s: s[0] * s[1]) if adequate else max(shapes)


def _decimated_shape(ds: rasterio.io.DatasetReader, max_pixels: int) -> tuple[int, int]:
    """(rows, cols) of a whole-extent read holding about `max_pixels` (GDAL decimates)."""
    f = math.sqrt(max_pixels / (ds.width * ds.height))
    return max(1, math.ceil(ds.height * f)), max(1, math.ceil(ds.width * f))


def _sample_windows(
    ds: rasterio.io.DatasetReader, max_pixels: int, rng: np.random.Generator
) -> list[Window]:
    """Small windows, one at a random place in each cell of a regular grid over the scene.

    Stratified and small because band percentiles are taken from them: a few large random
    windows can land on one bright roof and move the 98th percentile by half the range.
    """
    side = 32
    w, h = min(side, ds.width), min(side, ds.height)
    n = max(1, math.ceil(2 * max_pixels / (w * h)))  # 2x: some windows are mostly nodata
    gy = max(1, min(ds.height // h, round(math.sqrt(n * ds.height / ds.width))))
    gx = max(1, min(ds.width // w, math.ceil(n / gy)))
    windows = []
    for r0, r1 in _cells(ds.height, gy):
        for c0, c1 in _cells(ds.width, gx):
            r = int(rng.integers(r0, max(r0, r1 - h) + 1))  # cells are >= the window
            c = int(rng.integers(c0, max(c0, c1 - w) + 1))
            windows.append(Window(c, r, w, h))
    return windows


def _cells(length: int, n: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, length, n + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _valid_values(
    ds: rasterio.io.DatasetReader,
    bands: list[int],
    window: Window | None,
    shape: tuple[int, int] | None,
) -> np.ndarray:
    kw: dict = {"window": window}
    if shape is not None:
        kw.update(out_shape=(len(bands), *shape), resampling=Resampling.nearest)
    data = ds.read(bands, out_dtype="float32", **kw)
    if all_valid(ds, bands):  # integers, no nodata, no mask: 400 mask reads saved
        return data.reshape(len(bands), -1)
    masks = ds.read_masks(bands, **kw)
    ok = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    return data[:, ok]
