"""The only laspy user: chunked LAS/LAZ reading and DSM / DTM / nDSM rasterisation on a grid.

Points are streamed in chunks, never all held: a 50 M-point cloud rasterises in bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from geodetect.raster import Grid


@dataclass(frozen=True)
class CloudInfo:
    """Header facts of a LAS/LAZ file."""

    path: str
    crs: CRS | None  # None when absent or EPSG 0
    bounds: tuple[float, float, float, float]  # minx, miny, maxx, maxy
    zrange: tuple[float, float]
    count: int
    version: str
    point_format: int
    has_rgb: bool


def open_cloud(path: str | Path) -> CloudInfo:
    """Read the header; raises PointCloudError for missing, truncated or foreign files."""
    raise NotImplementedError


def cloud_grid(info: CloudInfo, resolution: float) -> Grid:
    """A north-up grid covering the cloud at `resolution` CRS units per cell."""
    raise NotImplementedError


def rasterize_cloud(path: str | Path, grid: Grid, kind: str = "dsm", fill_holes: int = 2) -> np.ndarray:
    """Elevation raster (H, W) float32 on `grid` (NaN where no points): dsm | dtm | ndsm.

    DSM = highest return per cell; DTM = ground (class 2) or a morphological minimum;
    nDSM = DSM − DTM. Holes up to `fill_holes` cells are filled.
    """
    raise NotImplementedError


def rasterize_file(
    las: str | Path,
    out: str | Path,
    like: str | Path | None = None,
    resolution: float | None = None,
    kind: str = "dsm",
    progress: bool = False,
) -> Path:
    """`geodetect rasterize`: write a DEM GeoTIFF atomically; returns its path."""
    raise NotImplementedError


def read_points(path: str | Path, max_points: int = 2_000_000) -> dict[str, np.ndarray]:
    """A thinned sample for display: {"xyz": (N, 3), "classification": (N,), "rgb": (N, 3) uint8 if any}."""
    raise NotImplementedError
