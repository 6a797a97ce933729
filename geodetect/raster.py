"""Reading scenes through rasterio: open, working grids, windows, resampled reads.

Never loads a whole scene: every read is a window of a (possibly warped/resampled) grid.
Every rasterio/GDAL failure is turned into a RasterError `<file>: <what is wrong>` here, at
the boundary (`raster_errors`, also used by `geotiff.py`, which writes, and `bandstats.py`,
which samples pixels for colour statistics), so callers only ever see GeodetectErrors.

GDAL's block cache defaults to 5 % of RAM and fills up on a long tiled pass over a big scene,
so peak memory would depend on the machine, not on tile x batch; our reads are block-aligned
tiles that revisit only the blocks of the overlap with the previous row of tiles (one or two
block rows: 25 MB across a 16384-px RGB scene), so a small cache costs nothing. We set 32 MB
unless the user chose a GDAL_CACHEMAX: on a dense 16384² scene 128 MB had cost 170–230 MB of
peak RSS (the cache fills within each task and is freed when it closes) at the same speed.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("GDAL_CACHEMAX", "32")  # MB; see the module docstring

import rasterio  # noqa: E402 - after the cache setting
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geodetect.errors import InputError, RasterError
from geodetect.remote import gdal_path, is_remote

# A CRS-less scene is warped in a stand-in projected CRS (source and target are the same, so
# GDAL only applies the affine maps); y is flipped so the stand-in frame is north-up.
_PIXEL_CRS = CRS.from_epsg(3857)
_FLIP = Affine(1, 0, 0, 0, -1, 0)
# Declared sizes beyond this are a corrupt header, not a scene (4 Gpx per band, 1024 bands).
_MAX_SIDE = 4_000_000
_MAX_BANDS = 1024


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
            x, y = self.transform @ (col, row)
            xs.append(x)
            ys.append(y)
        return (min(xs), min(ys), max(xs), max(ys))

    def window_grid(self, window: Window) -> Grid:
        """The sub-grid covered by a window (may extend past the edges)."""
        col, row = window.col_off, window.row_off
        return Grid(
            self.crs,
            self.transform @ Affine.translation(col, row),
            int(window.width),
            int(window.height),
        )


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
    data_bands: tuple[int, ...] = ()  # 1-based bands that are not alpha


# ------------------------------------------------------------------------------ errors


@contextlib.contextmanager
def raster_errors(path: str | Path) -> Iterator[None]:
    """Turn any GDAL/rasterio failure into RasterError `<file>: <what is wrong>`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            yield
    except RasterError:
        raise
    except (RasterioError, OSError, ValueError, MemoryError, RuntimeError) as exc:
        raise RasterError(f"{path}: {_reason(exc, path)}") from None


def _reason(exc: BaseException, path: str | Path) -> str:
    """GDAL's most specific message (rasterio chains them), one line, without the file name."""
    msgs = []
    cur: BaseException | None = exc
    while cur is not None and len(msgs) < 10:
        msgs.append(" ".join(str(cur).split()))
        cur = cur.__cause__ or cur.__context__
    specific = [m for m in msgs if m and "See previous exception" not in m]
    msg = specific[-1] if specific else (msgs[0] or type(exc).__name__)
    for p in {str(path), os.path.abspath(path), Path(path).name}:
        msg = msg.replace(f"'{p}'", "file").replace(p, "file")
    if is_remote(path) and _missing_remote(msgs):
        return "no such remote object (or no access: check the URL and GDAL's credential variables)"
    if "not recognized as being in a supported file format" in msg:
        return "not a raster GDAL can read (unrecognised format or corrupt header)"
    if isinstance(exc, MemoryError):
        return "declared size is too large to read (corrupt header?)"
    if "No such file or directory" in msg:
        return f"refers to a file that cannot be opened ({msg})"
    if any("Read failed" in m for m in msgs):
        return f"cannot read pixel data; truncated or corrupt file? ({msg})"
    return f"cannot read raster ({msg})"


def _missing_remote(msgs: list[str]) -> bool:
    """GDAL's ways of saying that a /vsi object is absent or forbidden."""
    signs = ("No such file", "does not exist", "HTTP response code: 40", "404", "403")
    return any(s in m for m in msgs for s in signs)


def check_file(path: str | Path) -> None:
    if is_remote(path):
        gdal_path(path)  # an unknown URL scheme fails here; GDAL reports the rest at open
        return
    p = Path(path)
    if not p.exists():
        raise RasterError(f"{path}: no such file")
    if p.is_dir():
        raise RasterError(f"{path}: is a folder, not a raster file")
    if p.stat().st_size == 0:
        raise RasterError(f"{path}: empty file (0 bytes)")


def _probe(ds: rasterio.io.DatasetReader) -> None:
    """Decode the first and last block so a truncated or dangling file fails at open time."""
    h, w = ds.height, ds.width
    bh, bw = ds.block_shapes[0] if ds.block_shapes else (1, 1)
    for row, col in ((0, 0), (h - 1, w - 1)):
        r0, c0 = (row // bh) * bh, (col // bw) * bw
        win = Window(c0, r0, min(bw, w - c0, 1024), min(bh, h - r0, 1024))
        ds.read(1, window=win)
        ds.read_masks(1, window=win)


# ------------------------------------------------------------------------------ opening


def open_raster(path: str | Path) -> RasterInfo:
    """Inspect a raster; raises RasterError (`<file>: <what is wrong>`) for anything unreadable."""
    check_file(path)
    with raster_errors(path), rasterio.open(gdal_path(path)) as ds:
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise RasterError(f"{path}: has no pixels (a vector or empty dataset?)")
        if max(ds.width, ds.height) > _MAX_SIDE or ds.count > _MAX_BANDS:
            raise RasterError(
                f"{path}: declares an absurd size ({ds.count}×{ds.height}×{ds.width}); "
                "the header is corrupt"
            )
        _probe(ds)
        crs = ds.crs if ds.crs else None
        transform = ds.transform if crs is not None else Affine.identity()
        grid = Grid(crs, transform, ds.width, ds.height)
        alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci.name == "alpha"]
        flags = ds.mask_flag_enums
        has_mask = any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)
        return RasterInfo(
            path=str(path),
            grid=grid,
            count=ds.count,
            dtype=ds.dtypes[0],
            nodata=None if ds.nodata is None else float(ds.nodata),
            has_mask=has_mask,
            gsd=_gsd_metres(grid),
            georeferenced=crs is not None,
            is_geographic=bool(crs is not None and crs.is_geographic),
            overviews=tuple(ds.overviews(1)),
            data_bands=tuple(b for b in range(1, ds.count + 1) if b not in alpha),
        )


def _metres_per_unit(crs: CRS) -> float:
    """Linear unit of a projected CRS in metres (1 for metres, 0.3048 for feet, …)."""
    from pyproj import CRS as PCRS

    axes = PCRS.from_user_input(crs.to_wkt()).axis_info
    return float(axes[0].unit_conversion_factor) if axes else 1.0


def _gsd_metres(grid: Grid) -> float:
    """Mean pixel size in metres; at the scene centre for geographic CRSs; pixels when no CRS."""
    rx, ry = grid.res
    if grid.crs is None:
        return float((rx + ry) / 2)
    if not grid.crs.is_geographic:
        return float((rx + ry) / 2 * _metres_per_unit(grid.crs))
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    c, r = grid.width / 2, grid.height / 2
    x0, y0 = grid.transform @ (c, r)
    x1, y1 = grid.transform @ (c + 1, r)
    x2, y2 = grid.transform @ (c, r + 1)
    dx = geod.inv(x0, y0, x1, y1)[2]
    dy = geod.inv(x0, y0, x2, y2)[2]
    return float((dx + dy) / 2)


# ------------------------------------------------------------------------------ grids


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS84 UTM zone holding (lon, lat)."""
    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def working_grid(info: RasterInfo, gsd: float | None = None) -> Grid:
    """The north-up, projected grid we process a scene on, at `gsd` (default: native).

    `gsd` is in metres (pixels for a CRS-less scene). Geographic scenes get the local UTM
    zone; any resampling ratio is allowed. A native north-up grid at its own GSD is returned
    unchanged, so SceneReader reads it without warping.
    """
    if gsd is not None and not (math.isfinite(gsd) and gsd > 0):
        raise InputError(f"gsd must be a positive number of metres, got {gsd}")
    native = info.grid
    if native.crs is not None and native.crs.is_geographic:
        return _geographic_working_grid(native, gsd or info.gsd)
    t = native.transform
    north_up = t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0
    if native.crs is None:
        north_up = True  # pixel frame: identity transform, y down by definition
    if gsd is None or (north_up and _close(gsd, info.gsd) and _close(*native.res)):
        if north_up:
            return native
        gsd = info.gsd
    unit = gsd / (_metres_per_unit(native.crs) if native.crs is not None else 1.0)
    if native.crs is None:
        return _scaled(native, unit, Affine(unit, 0, 0, 0, unit, 0))
    left, bottom, right, top = native.bounds
    return _scaled(native, unit, Affine(unit, 0, left, 0, -unit, top))


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel)


def _scaled(native: Grid, unit: float, transform: Affine) -> Grid:
    left, bottom, right, top = native.bounds
    width = max(1, math.ceil((right - left) / unit - 1e-6))
    height = max(1, math.ceil((top - bottom) / unit - 1e-6))
    return Grid(native.crs, transform, width, height)


def _geographic_working_grid(native: Grid, gsd: float) -> Grid:
    from rasterio.warp import calculate_default_transform

    left, bottom, right, top = native.bounds
    dst = utm_crs((left + right) / 2, (bottom + top) / 2)
    transform, width, height = calculate_default_transform(
        native.crs, dst, native.width, native.height, left, bottom, right, top, resolution=gsd
    )
    return Grid(dst, transform, int(width), int(height))


# ------------------------------------------------------------------------------ reading


class SceneReader:
    """Reads windows of a scene on a given grid (resampled/warped on the fly). Picklable by path.

    `read(window)` returns (data float32 (C, H, W), valid bool (H, W)); windows may extend past
    the grid edges (boundless; outside is invalid). Files are (re)opened lazily per process.
    When `grid` is the native grid (or an integer-offset sub-grid of it) reads are plain
    windowed reads; otherwise they go through a WarpedVRT with `resampling`.
    """

    def __init__(
        self,
        path: str | Path,
        grid: Grid,
        bands: list[int] | None = None,
        resampling: str = "bilinear",
    ):
        try:
            self._resampling = Resampling[resampling]
        except KeyError:
            names = ", ".join(r.name for r in Resampling)
            raise InputError(f"unknown resampling {resampling!r}; use one of {names}") from None
        self.path = str(path)
        self.grid = grid
        self.bands = list(bands) if bands else None
        self._ds: rasterio.io.DatasetReader | None = None
        self._vrt: rasterio.vrt.WarpedVRT | None = None
        self._offset: tuple[int, int] | None = None  # direct mode: grid origin in file pixels
        self._all_valid = False  # direct mode, integer bands without nodata or mask
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_ds=None, _vrt=None, _offset=None, _pid=None)
        return state

    def _open(self) -> None:
        if self._ds is not None and self._pid == os.getpid():
            return
        # after fork the inherited handles belong to the parent: drop, never close them
        self._ds = self._vrt = None
        check_file(self.path)
        with raster_errors(self.path):
            ds = rasterio.open(gdal_path(self.path))
            native = _native_grid(ds)
            if self.bands is None:
                self.bands = list(range(1, ds.count + 1))
            bad = [b for b in self.bands if not 1 <= b <= ds.count]
            if bad:
                ds.close()
                raise RasterError(f"{self.path}: has {ds.count} band(s), no band {bad[0]}")
            self._offset = _integer_offset(native, self.grid)
            if self._offset is None:
                self._vrt = self._warped(ds, native)
            self._all_valid = self._offset is not None and all_valid(ds, self.bands)
            self._ds = ds
            self._pid = os.getpid()

    def _warped(self, ds: rasterio.io.DatasetReader, native: Grid) -> rasterio.vrt.WarpedVRT:
        from rasterio.vrt import WarpedVRT

        if (native.crs is None) != (self.grid.crs is None):
            raise RasterError(f"{self.path}: cannot read a CRS-less scene on a georeferenced grid")
        kwargs: dict = {}
        if native.crs is None:
            kwargs.update(src_crs=_PIXEL_CRS, src_transform=_FLIP @ native.transform)
            crs, transform = _PIXEL_CRS, _FLIP @ self.grid.transform
        else:
            crs, transform = self.grid.crs, self.grid.transform
        if ds.nodata is None:
            kwargs["add_alpha"] = True  # marks the outside-of-scene area as invalid
        return WarpedVRT(
            ds,
            crs=crs,
            transform=transform,
            width=self.grid.width,
            height=self.grid.height,
            resampling=self._resampling,
            **kwargs,
        )

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (C, h, w), valid bool (h, w)) for an integer window of the grid."""
        self._open()
        col, row = int(round(window.col_off)), int(round(window.row_off))
        w, h = int(round(window.width)), int(round(window.height))
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + w, self.grid.width), min(row + h, self.grid.height)
        src = self._vrt if self._vrt is not None else self._ds
        dc, dr = self._offset or (0, 0)
        inner = Window(c0 + dc, r0 + dr, c1 - c0, r1 - r0)
        if self._all_valid and (c1 - c0, r1 - r0) == (w, h):  # the common case: no copies
            with raster_errors(self.path):
                part = src.read(self.bands, window=inner, out_dtype="float32", boundless=False)
            return part, np.ones((h, w), bool)
        data = np.zeros((len(self.bands), h, w), np.float32)
        valid = np.zeros((h, w), bool)
        if c1 <= c0 or r1 <= r0:
            return data, valid
        with raster_errors(self.path):
            part = src.read(self.bands, window=inner, out_dtype="float32", boundless=False)
            masks = src.read_masks(self.bands, window=inner)
        ok = np.all(masks > 0, axis=0) & np.all(np.isfinite(part), axis=0)
        part[:, ~ok] = 0.0
        ys, xs = slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)
        data[:, ys, xs] = part
        valid[ys, xs] = ok
        return data, valid

    def close(self) -> None:
        if self._pid == os.getpid():
            for h in (self._vrt, self._ds):
                if h is not None:
                    h.close()
        self._ds = self._vrt = None
        self._pid = None

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def all_valid(ds: rasterio.io.DatasetReader, bands: list[int]) -> bool:
    """Every pixel of these bands is valid: integers (no NaN), no nodata value, no mask."""
    return all(
        np.issubdtype(np.dtype(ds.dtypes[b - 1]), np.integer)
        and ds.nodatavals[b - 1] is None
        and ds.mask_flag_enums[b - 1] == [MaskFlags.all_valid]
        for b in bands
    )


def _native_grid(ds: rasterio.io.DatasetReader) -> Grid:
    crs = ds.crs if ds.crs else None
    return Grid(crs, ds.transform if crs is not None else Affine.identity(), ds.width, ds.height)


def _integer_offset(native: Grid, grid: Grid) -> tuple[int, int] | None:
    """(col, row) of `grid`'s origin in the file when `grid` is the native grid shifted by whole
    pixels (same CRS, same pixel size and rotation); None when a warp is needed."""
    if (native.crs is None) != (grid.crs is None):
        return None
    if native.crs is not None and native.crs != grid.crs:
        return None
    rel = ~native.transform @ grid.transform
    a, b, c, d, e, f = tuple(rel)[:6]
    if not (abs(a - 1) < 1e-9 and abs(e - 1) < 1e-9 and abs(b) < 1e-9 and abs(d) < 1e-9):
        return None
    if abs(c - round(c)) > 1e-6 or abs(f - round(f)) > 1e-6:
        return None
    return int(round(c)), int(round(f))


def tile_windows(width: int, height: int, tile: int, overlap: int) -> list[Window]:
    """Windows of side `tile` stepping by `tile - overlap`, covering the grid exactly.

    The last row/column of windows is flush with the far edge, so the union is exactly the
    grid and no window leaves it. A side shorter than `tile` gets one window clipped to it.
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise InputError(f"tile {tile} / overlap {overlap}: need tile >= 1 and 0 <= overlap < tile")
    if width < 1 or height < 1:
        return []
    cols, rows = tile_starts(width, tile, tile - overlap), tile_starts(height, tile, tile - overlap)
    tw, th = min(tile, width), min(tile, height)
    return [Window(c, r, tw, th) for r in rows for c in cols]


def tile_starts(size: int, tile: int, step: int) -> list[int]:
    """Offsets of tiles of side `tile` along one axis of `size`, the last flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return [*starts, size - tile]
