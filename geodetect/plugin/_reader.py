"""npe2 readers: GeoTIFF scenes and LAS/LAZ clouds as georeferenced napari layers.

Readers return None for anything they cannot read (napari then tries other readers) and
never raise. All file access goes through the core (`geodetect.raster`, `geodetect.pointcloud`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window

from geodetect.errors import GeodetectError
from geodetect.plugin._coords import KEY, image_placement, map_to_world, world_origin
from geodetect.remote import display_name, is_remote

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")
CLOUD_SUFFIXES = (".las", ".laz")
EAGER_PIXELS = 4096 * 4096  # below this a scene is read whole; above, lazily per view
MIN_LEVEL_SIDE = 512  # the coarsest multiscale level is about this big
DISPLAY_POINTS = 300_000  # points shown in the 3-D layer (thinned)

LayerData = tuple[object, dict, str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: a reader for every path we can open, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_readable(p) for p in paths):
        return None
    return read_paths


def _suffix(path: str) -> str:
    """The extension, also of a URL with a query (`https://…/a.tif?sig=…`)."""
    return Path(display_name(path)).suffix.lower()


def _readable(path: str) -> bool:
    suffix = _suffix(path)
    try:
        if suffix in RASTER_SUFFIXES:
            from geodetect.raster import open_raster

            open_raster(path)
            return True
        if suffix in CLOUD_SUFFIXES:
            from geodetect.pointcloud import open_cloud

            open_cloud(path)
            return True
    except (GeodetectError, OSError, ValueError):
        return False
    return False


def read_paths(path: str | list[str]) -> list[LayerData]:
    """Layers for each path: a scene image, or a cloud's points plus DSM/nDSM images."""
    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        if _suffix(p) in CLOUD_SUFFIXES:
            layers.extend(cloud_layers(p))
        else:
            layers.append(scene_layer(p))
    return layers


# ------------------------------------------------------------------------------ scenes


class WindowArray:
    """Array-like (H, W[, C]) over one grid of a scene; slicing reads only that window.

    napari slices multiscale levels with the visible region, so a huge scene is never read
    whole. Reads are serialised: a rasterio dataset is not safe across napari's slicing threads.
    """

    def __init__(self, path: str, grid, bands: list[int], nan_invalid: bool):
        from geodetect.raster import SceneReader

        self._reader = SceneReader(path, grid, bands=bands, resampling="average")
        self._lock = threading.Lock()
        self._nan = nan_invalid
        self._rgb = len(bands) > 1
        self.shape = (
            (grid.height, grid.width, len(bands)) if self._rgb else (grid.height, grid.width)
        )
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        rows, cols = (_as_slice(k, n) for k, n in zip(key[:2], self.shape[:2], strict=True))
        with self._lock:
            data, valid = self._reader.read(
                Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            )
        if self._nan:
            data[:, ~valid] = np.nan
        out = np.moveaxis(data, 0, -1) if self._rgb else data[0]
        out = out[:: rows.step or 1, :: cols.step or 1]
        squeeze = tuple(0 if isinstance(k, (int, np.integer)) else slice(None) for k in key[:2])
        out = out[squeeze]
        return out[(Ellipsis, key[2])] if self._rgb and len(key) > 2 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ARG002 - numpy protocol
        arr = self[:, :]
        return arr.astype(dtype) if dtype is not None else arr


def _as_slice(k, n: int) -> slice:
    """An int or slice of one axis as a concrete slice within [0, n)."""
    if isinstance(k, (int, np.integer)):
        k = int(k) + (n if k < 0 else 0)
        return slice(k, k + 1, 1)
    start, stop, step = k.indices(n)
    return slice(start, max(stop, start), step)


def _levels(info) -> list:
    """Grids of the multiscale pyramid: native, then ×2 coarser until about MIN_LEVEL_SIDE."""
    from geodetect.raster import Grid

    g = info.grid
    grids = [g]
    f = 2
    while max(g.width, g.height) / (f // 2) > 2 * MIN_LEVEL_SIDE:
        grids.append(
            Grid(
                g.crs,
                g.transform @ Affine.scale(f),
                math.ceil(g.width / f),
                math.ceil(g.height / f),
            )
        )
        f *= 2
    return grids


def scene_layer(path: str, name: str | None = None, kind: str = "scene") -> LayerData:
    """One image layer for a scene: RGB from its first three data bands, else one band."""
    from geodetect.bandstats import sample_pixels
    from geodetect.raster import open_raster

    info = open_raster(path)
    bands = list(info.data_bands or range(1, info.count + 1))
    bands = bands[:3] if len(bands) >= 3 else bands[:1]
    rgb = len(bands) == 3
    float_band = not rgb and info.dtype.startswith("float")
    lo, hi = _contrast(sample_pixels(path, bands, max_pixels=100_000))
    if info.grid.width * info.grid.height <= EAGER_PIXELS:
        data = np.asarray(WindowArray(path, info.grid, bands, float_band)[:, :])
        multiscale = False
    else:
        data = [WindowArray(path, g, bands, float_band) for g in _levels(info)]
        multiscale = True
    kwargs = {
        "name": name or Path(display_name(path)).stem,
        "rgb": rgb,
        "multiscale": multiscale,
        "contrast_limits": (lo, hi),
        "metadata": {KEY: _scene_meta(path, info.grid, kind)},
        **image_placement(info.grid.transform, info.georeferenced),
    }
    if not rgb:
        kwargs["colormap"] = "viridis" if float_band else "gray"
    return (data, kwargs, "image")


def _contrast(values: np.ndarray) -> tuple[float, float]:
    """A robust display range (2–98 %) over all bands; (0, 1) when there is nothing valid."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(values, [2, 98])
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def _scene_meta(path: str, grid, kind: str) -> dict:
    return {
        "kind": kind,
        "path": str(path) if is_remote(path) else str(Path(path).resolve()),
        "crs": grid.crs.to_wkt() if grid.crs is not None else None,
        "crs_name": grid.crs.to_string() if grid.crs is not None else None,
        "transform": tuple(grid.transform)[:6],
        "shape": (grid.height, grid.width),
    }


# ------------------------------------------------------------------------------ clouds


def open_scene_grid(crs) -> object | None:
    """The grid of a scene already open in the current napari viewer, in the cloud's CRS
    (the reader hook gets no viewer; napari's current one is the one opening the file)."""
    try:
        import napari
        from rasterio.crs import CRS

        from geodetect.raster import Grid

        viewer = napari.current_viewer()
        for layer in viewer.layers if viewer is not None else []:
            meta = layer.metadata.get(KEY, {})
            if meta.get("kind") != "scene" or (meta.get("crs") is None) != (crs is None):
                continue
            scene_crs = CRS.from_wkt(meta["crs"]) if meta.get("crs") else None
            if crs is None or scene_crs == crs:
                h, w = meta["shape"]
                return Grid(scene_crs, Affine(*meta["transform"]), w, h)
    except Exception:  # noqa: BLE001 - a reader never raises; fall back to the cloud's grid
        return None
    return None


def cloud_grid_for(path: str):
    """The grid a cloud's DSM/nDSM is drawn on, so the elevation lines up pixel for pixel with
    what one labels: an open scene's in the same CRS, else its sibling scene's (same stem),
    else a north-up grid at about twice the mean point spacing."""
    from geodetect.pointcloud import cloud_grid, open_cloud
    from geodetect.raster import open_raster

    info = open_cloud(path)
    grid = open_scene_grid(info.crs)
    if grid is not None:
        return info, grid
    p = Path(path)
    for suffix in (".tif", ".tiff"):
        sibling = p.with_suffix(suffix)
        if sibling.exists():
            try:
                grid = open_raster(sibling).grid
            except GeodetectError:
                continue
            if (grid.crs is None) == (info.crs is None):
                return info, grid
    minx, miny, maxx, maxy = info.bounds
    spacing = math.sqrt(max((maxx - minx) * (maxy - miny), 1e-9) / info.count)
    resolution = float(f"{2 * spacing:.2g}")
    return info, cloud_grid(info, resolution)


def cloud_layers(path: str) -> list[LayerData]:
    """A points layer (thinned, coloured by height) and nDSM + DSM images on one grid."""
    from geodetect.pointcloud import rasterize_cloud, read_points

    info, grid = cloud_grid_for(path)
    georef = info.crs is not None
    stem = Path(display_name(path)).stem
    layers: list[LayerData] = []
    for kind in ("dsm", "ndsm"):
        dem = rasterize_cloud(path, grid, kind=kind)
        lo, hi = _contrast(dem)
        layers.append(
            (
                dem,
                {
                    "name": f"{stem} {kind.upper()}",
                    "colormap": "viridis" if kind == "ndsm" else "gist_earth",
                    "contrast_limits": (lo, hi),
                    "visible": kind == "ndsm",
                    "opacity": 0.5,  # the scene (labelled on) shows through
                    "metadata": {KEY: {**_scene_meta(path, grid, kind), "cloud": str(path)}},
                    **image_placement(grid.transform, georef),
                },
                "image",
            )
        )
    pts = read_points(path, max_points=DISPLAY_POINTS)
    origin = world_origin(grid.transform, georef)
    # 2-D points (height as colour): a 3-D layer put a z slider in the 2-D view that showed
    # only a 1 m slice of the cloud
    data = map_to_world(pts["xyz"][:, :2], georef) - np.asarray(origin)
    z = pts["xyz"][:, 2]
    features = {"z": z, "classification": pts["classification"].astype(int)}
    kwargs = {
        "name": f"{stem} points",
        "visible": False,  # the scene is what one labels on; the points are one click away
        "translate": origin,
        "size": 2.0 * grid.res[0],
        "border_width": 0,
        "features": features,
        "face_color": "z",
        "face_colormap": "viridis",
        "metadata": {
            KEY: {**_scene_meta(path, grid, "cloud"), "cloud": str(path), "rgb": pts.get("rgb")}
        },
    }
    layers.append((data, kwargs, "points"))
    return layers
