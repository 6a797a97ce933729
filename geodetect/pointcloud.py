"""The only laspy user: chunked LAS/LAZ reading and DSM / DTM / nDSM rasterisation on a grid.

Points are streamed in chunks, never all held: a 50 M-point cloud rasterises in bounded memory
(chunk size + a few float32 grids). Every laspy/lazrs failure, Rust panics included, becomes a
PointCloudError `<file>: <what is wrong>` here.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import laspy
import numpy as np
from affine import Affine
from rasterio.crs import CRS

from geodetect.errors import CRSError, GeodetectError, InputError, PointCloudError
from geodetect.geotiff import write_raster
from geodetect.raster import Grid, open_raster
from geodetect.remote import fetch, is_remote

KINDS = ("dsm", "dtm", "ndsm")
NODATA = -9999.0  # written DEMs: -9999 rather than NaN, which some GIS tools mishandle
CHUNK = 1_000_000
GROUND = 2
NOISE = (7, 18)  # low / high noise: never the top of the surface
MAX_CELLS = 1_000_000_000


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


# ------------------------------------------------------------------------------ errors


@contextlib.contextmanager
def _cloud_errors(path: str | Path) -> Iterator[None]:
    """Any failure of laspy or the LAZ backend -> PointCloudError.

    lazrs reports Rust panics as pyo3 PanicException, a BaseException: catch broadly, but let
    interrupts and our own errors through.
    """
    try:
        yield
    except (GeodetectError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except MemoryError:
        raise PointCloudError(f"{path}: too large to read (corrupt header?)") from None
    except BaseException as exc:  # noqa: BLE001 - see docstring
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise PointCloudError(f"{path}: cannot read point cloud ({msg})") from None


def _local(path: str | Path) -> Path:
    """The file laspy reads: the path itself, or an HTTP(S) cloud fetched once per process
    (see remote.py); other remote schemes are a clean error."""
    if is_remote(path):
        try:
            return fetch(path, "point cloud")
        except GeodetectError as exc:
            raise PointCloudError(str(exc)) from None
    return Path(path)


def _check_file(path: str | Path) -> None:
    p = _local(path)
    if not p.exists():
        raise PointCloudError(f"{path}: no such file")
    if p.is_dir():
        raise PointCloudError(f"{path}: is a folder, not a LAS/LAZ file")
    if p.stat().st_size == 0:
        raise PointCloudError(f"{path}: empty file (0 bytes)")


# ------------------------------------------------------------------------------ header


def open_cloud(path: str | Path) -> CloudInfo:
    """Read the header; raises PointCloudError for missing, truncated, empty or foreign files.

    A LAZ file is checked by decoding its last point (a cut file fails there); an uncompressed
    LAS by comparing its size with what the header declares.
    """
    _check_header(path)
    with _cloud_errors(path), laspy.open(_local(path)) as reader:
        header = reader.header
        count = int(header.point_count)
        if count == 0:
            raise PointCloudError(f"{path}: has no points")
        _check_complete(path, reader, count)
        mins, maxs = header.mins, header.maxs
        fmt = header.point_format
        return CloudInfo(
            path=str(path),
            crs=_header_crs(header),
            bounds=(float(mins[0]), float(mins[1]), float(maxs[0]), float(maxs[1])),
            zrange=(float(mins[2]), float(maxs[2])),
            count=count,
            version=str(header.version),
            point_format=int(fmt.id),
            has_rgb="red" in fmt.dimension_names,
        )


def _check_header(path: str | Path) -> None:
    """Sanity-check the public header block before laspy trusts it: a lying VLR or EVLR count
    would otherwise make it loop over billions of empty records (a hang, not an error)."""
    _check_file(path)
    size = _local(path).stat().st_size
    with open(_local(path), "rb") as f:
        head = f.read(375)
    if head[:4] != b"LASF":
        raise PointCloudError(f"{path}: not a LAS/LAZ file (no LASF signature)")
    if len(head) < 227:
        raise PointCloudError(f"{path}: truncated header ({len(head)} bytes)")
    major, minor = head[24], head[25]
    header_size, offset, n_vlrs = struct.unpack_from("<HII", head, 94)
    bad = None
    if major != 1 or minor > 4:
        bad = f"unsupported LAS version {major}.{minor}"
    elif not 227 <= header_size <= offset <= size:
        bad = "corrupt header (sizes and offsets do not fit the file)"
    elif n_vlrs * 54 > offset - header_size:
        bad = f"corrupt header ({n_vlrs} VLRs cannot fit before the points)"
    elif minor >= 4 and len(head) >= 247:
        evlr_start, n_evlrs = struct.unpack_from("<QI", head, 235)
        if n_evlrs and (evlr_start < offset or evlr_start + n_evlrs * 60 > size):
            bad = f"corrupt header ({n_evlrs} EVLRs do not fit in the file)"
    if bad:
        raise PointCloudError(f"{path}: {bad}")


def _check_complete(path: str | Path, reader: laspy.LasReader, count: int) -> None:
    """Catch a cut file from the header alone: an uncompressed LAS must hold every declared
    record; a LAZ writes its chunk table last, so a cut file points past its own end."""
    header = reader.header
    size = _local(path).stat().st_size
    if header.are_points_compressed:
        with open(_local(path), "rb") as f:
            f.seek(header.offset_to_point_data)
            (table,) = struct.unpack("<q", f.read(8).ljust(8, b"\xff"))
        if table != -1 and not header.offset_to_point_data + 8 <= table <= size - 8:
            raise PointCloudError(f"{path}: truncated (its LAZ chunk table lies past the end)")
        return
    need = header.offset_to_point_data + count * header.point_format.size
    if size < need:
        raise PointCloudError(f"{path}: truncated (header says {count} points, file ends early)")


def _header_crs(header: laspy.LasHeader) -> CRS | None:
    """Horizontal CRS from the VLRs; None when absent, EPSG 0 or unparseable."""
    try:
        pcrs = header.parse_crs()
    except Exception:  # noqa: BLE001 - a malformed GeoKey VLR means "no usable CRS"
        return None
    if pcrs is None:
        return None
    if pcrs.is_compound and pcrs.sub_crs_list:
        pcrs = pcrs.sub_crs_list[0]
    try:
        epsg = pcrs.to_epsg()
        return CRS.from_epsg(epsg) if epsg else CRS.from_wkt(pcrs.to_wkt())
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------ grids


def cloud_grid(info: CloudInfo, resolution: float) -> Grid:
    """A north-up grid covering the cloud at `resolution` CRS units per cell.

    Edges snap to multiples of the resolution, so clouds tiled on a common lattice line up.
    """
    if not (math.isfinite(resolution) and resolution > 0):
        raise InputError(f"--resolution must be a positive number, got {resolution}")
    minx, miny, maxx, maxy = info.bounds
    left = math.floor(minx / resolution) * resolution
    top = math.ceil(maxy / resolution) * resolution
    width = int(math.floor((maxx - left) / resolution)) + 1
    height = int(math.floor((top - miny) / resolution)) + 1
    if width * height > MAX_CELLS:
        raise InputError(
            f"{info.path}: --resolution {resolution} makes a {width}×{height} grid; "
            "use a coarser resolution"
        )
    return Grid(info.crs, Affine(resolution, 0, left, 0, -resolution, top), width, height)


# ------------------------------------------------------------------------------ rasterising


def _chunks(path: str | Path, chunk_size: int) -> Iterator[laspy.ScaleAwarePointRecord]:
    """Point chunks; a short read (header count larger than the data) is an error."""
    with _cloud_errors(path), laspy.open(_local(path)) as reader:
        expected, seen = int(reader.header.point_count), 0
        for chunk in reader.chunk_iterator(chunk_size):
            if len(chunk) == 0:
                break
            seen += len(chunk)
            yield chunk
        if seen < expected:
            raise PointCloudError(f"{path}: truncated (header says {expected} points, read {seen})")


def _transformer(info: CloudInfo, grid: Grid) -> object | None:
    """Cloud CRS -> grid CRS (pyproj); None when they agree; CRSError if one lacks a CRS."""
    if (info.crs is None) != (grid.crs is None):
        which = info.path if info.crs is None else "the target grid"
        raise CRSError(
            f"{which} has no CRS but the other side has one; "
            "assign it first (e.g. pdal translate --writers.las.a_srs=EPSG:…)"
        )
    if info.crs is None or info.crs == grid.crs:
        return None
    from pyproj import Transformer

    return Transformer.from_crs(info.crs.to_wkt(), grid.crs.to_wkt(), always_xy=True)


def rasterize_cloud(
    path: str | Path,
    grid: Grid,
    kind: str = "dsm",
    fill_holes: int = 2,
    chunk_size: int = CHUNK,
    ground_window: float = 8.0,
    progress: bool = False,
) -> np.ndarray:
    """Elevation raster (H, W) float32 on `grid` (NaN where no points): dsm | dtm | ndsm.

    DSM = highest return per cell (noise classes 7/18 ignored); DTM = lowest class-2 point per
    cell, or, when the cloud has no class 2, a grey opening of the lowest points with a window
    of `ground_window` CRS units; DTM holes are filled from the nearest ground cell wherever the
    DSM has data, so nDSM = max(DSM − DTM, 0) exists wherever the DSM does. NaN holes of up to
    `fill_holes` cells inside the data are filled from their neighbours' maximum.
    """
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    info = open_cloud(path)
    acc = _accumulate(path, info, grid, kind != "dsm", chunk_size, progress)
    dsm = _fill_small_holes(acc["dsm"], fill_holes)
    if kind == "dsm":
        return dsm
    if acc["has_ground"]:
        ground = acc["ground"]
    else:
        ground = _grey_opening(acc["zmin"], max(3, math.ceil(ground_window / grid.res[0])))
    dtm = _nearest_fill(ground)
    dtm[np.isnan(dsm)] = np.nan
    if kind == "dtm":
        return dtm
    return np.maximum(dsm - dtm, 0.0, where=np.isfinite(dsm), out=np.full_like(dsm, np.nan))


def _accumulate(
    path: str | Path,
    info: CloudInfo,
    grid: Grid,
    need_ground: bool,
    chunk_size: int,
    progress: bool,
) -> dict:
    """One streaming pass: per-cell max z, and min z of ground / of all points when needed."""
    shape = (grid.height, grid.width)
    n = grid.height * grid.width
    dsm = np.full(n, -np.inf, np.float32)
    zmin = np.full(n, np.inf, np.float32) if need_ground else None
    ground = np.full(n, np.inf, np.float32) if need_ground else None
    has_ground = False
    tr = _transformer(info, grid)
    inv = ~grid.transform
    bar = _progress(info.count, progress)
    for chunk in _chunks(path, max(1, chunk_size)):
        bar.update(len(chunk))
        x, y = np.asarray(chunk.x, np.float64), np.asarray(chunk.y, np.float64)
        if tr is not None:
            x, y = tr.transform(x, y)
        cols, rows = inv @ (x, y)
        cols, rows = np.floor(cols), np.floor(rows)
        cls = np.asarray(chunk.classification)
        inside = (cols >= 0) & (cols < grid.width) & (rows >= 0) & (rows < grid.height)
        inside &= ~np.isin(cls, NOISE)
        idx = (rows[inside] * grid.width + cols[inside]).astype(np.intp)
        z = np.asarray(chunk.z, np.float64)[inside].astype(np.float32)
        np.maximum.at(dsm, idx, z)
        if need_ground:
            np.minimum.at(zmin, idx, z)
            g = cls[inside] == GROUND
            if g.any():
                has_ground = True
                np.minimum.at(ground, idx[g], z[g])
    bar.close()
    out = {"dsm": _nan_where_inf(dsm).reshape(shape), "has_ground": has_ground}
    if need_ground:
        out["zmin"] = _nan_where_inf(zmin).reshape(shape)
        out["ground"] = _nan_where_inf(ground).reshape(shape)
    return out


def _progress(total: int, enabled: bool):  # noqa: ANN202 - tqdm or a stand-in
    from tqdm import tqdm

    return tqdm(total=total, unit="pt", unit_scale=True, disable=not enabled, leave=False)


def _nan_where_inf(a: np.ndarray) -> np.ndarray:
    a[~np.isfinite(a)] = np.nan
    return a


def _fill_small_holes(a: np.ndarray, size: int) -> np.ndarray:
    """Fill NaN regions that close up within `size` dilations (holes, not the outside)."""
    if size <= 0 or not np.isnan(a).any() or np.isnan(a).all():
        return a
    from scipy import ndimage

    holes = np.isnan(a)
    filled = a.copy()
    for _ in range(size):
        grown = ndimage.maximum_filter(np.where(np.isnan(filled), -np.inf, filled), size=3)
        new = np.isnan(filled) & np.isfinite(grown)
        if not new.any():
            break
        filled[new] = grown[new]
    labels, n = ndimage.label(holes)
    if n == 0:
        return a
    unfilled = np.bincount(labels[np.isnan(filled)], minlength=n + 1)
    accept = (unfilled == 0)[labels] & holes
    out = a.copy()
    out[accept] = filled[accept]
    return out


def _grey_opening(zmin: np.ndarray, size: int) -> np.ndarray:
    """Morphological opening of the lowest points: removes objects narrower than `size` cells."""
    from scipy import ndimage

    eroded = ndimage.minimum_filter(np.where(np.isnan(zmin), np.inf, zmin), size=size)
    eroded[~np.isfinite(eroded)] = -np.inf  # empty areas must not spread in the dilation
    opened = ndimage.maximum_filter(eroded, size=size)
    opened[~np.isfinite(opened) | np.isnan(zmin)] = np.nan
    return opened


def _nearest_fill(a: np.ndarray) -> np.ndarray:
    """Every NaN cell takes its nearest finite cell's value (ground under buildings)."""
    missing = np.isnan(a)
    if not missing.any() or missing.all():
        return a.copy()
    from scipy import ndimage

    _, (ri, ci) = ndimage.distance_transform_edt(missing, return_indices=True)
    return a[ri, ci]


# ------------------------------------------------------------------------------ files


def rasterize_file(
    las: str | Path,
    out: str | Path,
    like: str | Path | None = None,
    resolution: float | None = None,
    kind: str = "dsm",
    progress: bool = False,
) -> Path:
    """`geodetect rasterize`: write a DEM GeoTIFF atomically; returns its path.

    The raster is float32 with nodata -9999 where there are no points. With `like` it has that
    scene's exact grid (CRS, transform, size); with `resolution` a north-up grid over the cloud.
    """
    from geodetect.atomic import check_not_input, check_out_dir

    if (like is None) == (resolution is None):
        raise InputError("give exactly one of --like IMAGE or --resolution M")
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    check_out_dir(out)
    check_not_input(out, [las, like])
    info = open_cloud(las)
    if like is not None:
        grid = open_raster(like).grid
        if (grid.crs is None) != (info.crs is None):
            missing = las if info.crs is None else like
            raise CRSError(
                f"{missing}: has no CRS, so the cloud cannot be placed on the scene; "
                "assign one (EPSG 0 counts as none)"
            )
    else:
        # the header's bounds can lie (a wrong scale, a writer that never updated them):
        # the grid covers the points themselves, as PDAL's writers.gdal does
        grid = cloud_grid(replace(info, bounds=point_bounds(las)), float(resolution))
    dem = rasterize_cloud(las, grid, kind=kind, progress=progress)
    if not np.isfinite(dem).any():
        where = f"the grid of {like}" if like is not None else "its own grid"
        raise PointCloudError(
            f"{las}: no point falls on {where}; check that the cloud covers the scene "
            "and that its CRS and header (scale, offset) are right"
        )
    dem = np.where(np.isnan(dem), np.float32(NODATA), dem).astype(np.float32)
    return write_raster(out, dem, grid, nodata=NODATA)


def point_bounds(path: str | Path, chunk_size: int = CHUNK) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of the points themselves, in one streamed pass."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for chunk in _chunks(path, chunk_size):
        xy = np.stack([np.asarray(chunk.x), np.asarray(chunk.y)])
        xy = xy[:, np.isfinite(xy).all(axis=0)]
        if xy.size:
            lo, hi = np.minimum(lo, xy.min(axis=1)), np.maximum(hi, xy.max(axis=1))
    if not np.isfinite(lo).all():
        raise PointCloudError(f"{path}: no point has finite coordinates (corrupt header scale?)")
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def read_points(
    path: str | Path, max_points: int = 2_000_000, chunk_size: int = CHUNK
) -> dict[str, np.ndarray]:
    """A thinned sample for display: {"xyz": (N, 3), "classification": (N,), "rgb": (N, 3) uint8
    if any}. Every k-th point, k = ceil(count / max_points), read chunk by chunk."""
    info = open_cloud(path)
    step = max(1, math.ceil(info.count / max(1, max_points)))
    xyz, cls, rgb = [], [], []
    start = 0
    for chunk in _chunks(path, chunk_size):
        first = (-start) % step
        sel = slice(first, None, step)
        start += len(chunk)
        xyz.append(
            np.stack(
                [np.asarray(chunk.x)[sel], np.asarray(chunk.y)[sel], np.asarray(chunk.z)[sel]],
                axis=1,
            )
        )
        cls.append(np.asarray(chunk.classification)[sel].astype(np.uint8))
        if info.has_rgb:
            rgb.append(np.stack([np.asarray(chunk[c])[sel] for c in ("red", "green", "blue")], 1))
    out = {
        "xyz": np.concatenate(xyz).astype(np.float64),
        "classification": np.concatenate(cls),
    }
    if rgb:
        colours = np.concatenate(rgb)
        if colours.size and colours.max() > 255:  # LAS stores 16-bit colour
            colours = colours >> 8
        out["rgb"] = colours.astype(np.uint8)
    return out
