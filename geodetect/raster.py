"""The only rasterio user: open scenes, working grids, windows, resampled reads, writing.

Never loads a whole scene: every read is a window of a (possibly warped/resampled) grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS (None = pixel frame), affine transform, size in pixels."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, positive."""
        a, b, _, d, e, _ = tuple(self.transform)[:6]
        return (float(np.hypot(a, d)), float(np.hypot(b, e)))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the grid's footprint in CRS units."""
        xs, ys = [], []
        for col, row in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height)):
            x, y = self.transform * (col, row)
            xs.append(x)
            ys.append(y)
        return (min(xs), min(ys), max(xs), max(ys))

    def window_grid(self, window: Window) -> Grid:
        """The sub-grid covered by a window (may extend past the edges)."""
        col, row = window.col_off, window.row_off
        return Grid(self.crs, self.transform * Affine.translation(col, row), int(window.width), int(window.height))


@dataclass(frozen=True)
class RasterInfo:
    """What we know about a scene file without reading its pixels."""

    path: str
    grid: Grid  # native grid
    count: int
    dtype: str
    nodata: float | None
    has_mask: bool  # an internal/sidecar mask or alpha band
    gsd: float  # ground sample distance in metres (CRS units; pixels when not georeferenced)
    georeferenced: bool
    is_geographic: bool
    overviews: tuple[int, ...]


def open_raster(path: str | Path) -> RasterInfo:
    """Inspect a raster; raises RasterError (`<file>: <what is wrong>`) for anything unreadable."""
    raise NotImplementedError


def working_grid(info: RasterInfo, gsd: float | None = None) -> Grid:
    """The north-up, projected grid we process a scene on, at `gsd` (default: native).

    Geographic scenes get the local UTM zone; any resampling ratio is allowed.
    """
    raise NotImplementedError


class SceneReader:
    """Reads windows of a scene on a given grid (resampled/warped on the fly). Picklable by path.

    `read(window)` returns (data float32 (C, H, W), valid bool (H, W)); windows may extend past
    the grid edges (boundless; outside is invalid). Files are (re)opened lazily per process.
    """

    def __init__(self, path: str | Path, grid: Grid, bands: list[int] | None = None, resampling: str = "bilinear"):
        raise NotImplementedError

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tile_windows(width: int, height: int, tile: int, overlap: int) -> list[Window]:
    """Windows of side `tile` stepping by `tile - overlap`, covering the grid exactly (last ones flush)."""
    raise NotImplementedError


def sample_pixels(path: str | Path, bands: list[int] | None = None, max_pixels: int = 200_000) -> np.ndarray:
    """Valid pixel values (C, N) from overviews or a sample of windows, for band statistics."""
    raise NotImplementedError


def write_raster(
    path: str | Path, array: np.ndarray, grid: Grid, nodata: float | None = None, compress: str = "deflate"
) -> Path:
    """Write (C, H, W) or (H, W) as a tiled GeoTIFF, atomically."""
    raise NotImplementedError
