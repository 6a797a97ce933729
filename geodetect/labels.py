"""Label and detection vector files (contract tables): reading, validation, CRS, writing.

Read with pyogrio/geopandas, written atomically by extension (.gpkg default, .geojson, .shp).
Turning a table's rows into boxes and back (across CRSs and pixel frames) is `boxes.py`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from geodetect import geometry
from geodetect.atomic import atomic_path, check_out_dir, fsync_dir, fsync_file
from geodetect.boxes import (
    DETECTION_FIELDS,
    RECT_RTOL,
    NotRectangle,
    affine_geoms,
    heading_to_pixel,
    polygon_boxes,
    quad_corners,
    single_polygons,
)
from geodetect.errors import CRSError, InputError, LabelError
from geodetect.raster import Grid

LABEL_FIELDS = ["label", "class", "image", "heading_deg"]


@dataclass
class SceneLabels:
    """The labels of one scene, in that scene grid's pixel frame."""

    boxes: np.ndarray  # (N, 5) [cx, cy, length, width, angle_deg] pixel frame
    classes: list[str]  # (N,)
    headings: np.ndarray  # (N,) degrees, NaN where the class has no front
    negatives: list[BaseGeometry] = field(default_factory=list)  # polygons, pixel frame
    feature_ids: list[int] = field(default_factory=list)  # positives' rows in the file


def read_vector(path: str | Path) -> gpd.GeoDataFrame:
    """Any OGR vector file; raises LabelError when missing or unreadable."""
    p = Path(path)
    if not p.exists():
        raise LabelError(f"{p}: no such file")
    if p.is_dir() and p.suffix.lower() not in _DIR_FORMATS:
        raise LabelError(f"{p}: is a folder, not a vector file")
    if p.is_file() and p.stat().st_size == 0:
        raise LabelError(f"{p}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "more than one layer": we read the first
            gdf = pyogrio.read_dataframe(p)
    except Exception as err:  # noqa: BLE001 - GDAL raises many types; the user needs one line
        raise LabelError(f"{p}: not a readable vector file ({_one_line(err)})") from None
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise LabelError(f"{p}: has no geometry column")
    if p.suffix.lower() in (".geojson", ".json"):
        if gdf.crs is None:
            gdf = gdf.set_crs("EPSG:4326")  # RFC 7946: GeoJSON without a CRS is WGS 84
        # GDAL reports WGS 84 for a file without a crs member; CRS-less scenes need to know
        gdf.attrs["crs_assumed"] = not _declares_crs(p)
    if p.suffix.lower() == ".shp":  # dBase cuts names at 10 characters: heading_deg -> heading_de
        cut = {f[:10]: f for f in _KNOWN_FIELDS if len(f) > 10}
        gdf = gdf.rename(columns={c: cut[c] for c in gdf.columns if c in cut and cut[c] not in gdf})
    return gdf


def read_labels(path: str | Path, scenes: list | None = None) -> gpd.GeoDataFrame:
    """Read and validate a label file (fields, 4-corner positives, classes).

    Returns the table with `label` lower-cased, positives as Polygons and `heading_deg` float;
    `attrs["source"]` holds the file name for later messages. Other tools' pixel-frame files
    (DOTA, YOLO-OBB, COCO, CVAT: `formats.py`) are mapped to the CRS of `scenes` (RasterInfos)
    matched by image name; without scenes they stay in pixel coordinates (no CRS).
    """
    p = Path(path)
    from geodetect.formats import format_of

    if format_of(p) is not None and p.exists():
        from geodetect.foreign import boxes_to_vector, read_boxes

        gdf = boxes_to_vector(read_boxes(p), scenes or [], strict=False)
    else:
        gdf = read_vector(p)
    if len(gdf) == 0:
        raise LabelError(f"{p}: no features; draw positives (and negatives) first")
    gdf = validate_labels(gdf, p.name)
    gdf.attrs["source"] = p.name
    return gdf


def validate_labels(gdf: gpd.GeoDataFrame, source: str = "labels") -> gpd.GeoDataFrame:
    """Check a label table against the contract; a copy with normalised fields.

    Raises LabelError naming the first offending feature (0-based row in the file).
    """
    if "label" not in gdf:
        raise LabelError(f"{source}: no 'label' field; each feature needs positive or negative")
    gdf = gdf.copy()
    label = gdf["label"].map(lambda v: str(v).strip().lower() if isinstance(v, str) else "")
    bad = ~label.isin(["positive", "negative"]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise LabelError(
            f"{source}: feature {i} has label {gdf['label'].iloc[i]!r}; "
            "expected 'positive' or 'negative'"
        )
    gdf["label"] = label.to_numpy()
    pos = (label == "positive").to_numpy()
    geoms = gdf.geometry.to_numpy()
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if empty.any():
        raise LabelError(f"{source}: feature {int(np.argmax(empty))} has no geometry")
    finite = np.array([np.isfinite(shapely.get_coordinates(g)).all() for g in geoms], bool)
    if not finite.all():
        i = int(np.argmin(finite))
        raise LabelError(f"{source}: feature {i} has a NaN or infinite vertex; redraw it")
    if pos.any():
        _check_classes(gdf, pos, source)
        geoms[pos] = single_polygons(geoms[pos])
        rect = _rectangle_mask(geoms[pos], gdf.crs) & shapely.is_valid(geoms[pos])
        if not rect.all():
            i = int(np.nonzero(pos)[0][np.argmin(rect)])
            raise LabelError(f"{source}: feature {i} is not a 4-corner rectangle")
    types = shapely.get_type_id(geoms)
    bad = ~pos & ~np.isin(types, [3, 6])  # Polygon, MultiPolygon
    if bad.any():
        i = int(np.argmax(bad))
        kind = geoms[i].geom_type
        raise LabelError(f"{source}: feature {i} is a {kind} negative; expected a Polygon")
    geoms[~pos] = _repaired(geoms[~pos], np.nonzero(~pos)[0], source)
    gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs))
    if "heading_deg" in gdf:
        gdf["heading_deg"] = _headings(gdf["heading_deg"], source)
    return gdf


def _repaired(geoms: np.ndarray, rows: np.ndarray, source: str) -> np.ndarray:
    """Negatives that are not valid polygons (a bow-tie, a self-touching ring from QGIS) made
    valid with shapely's make_valid, said on stderr; GEOS would fail on them later."""
    bad = ~shapely.is_valid(geoms)
    if not bad.any():
        return geoms
    out = geoms.copy()
    for j in np.nonzero(bad)[0]:
        fixed = shapely.make_valid(geoms[j])
        parts = [p for p in shapely.get_parts(fixed) if p.geom_type in ("Polygon", "MultiPolygon")]
        area = shapely.union_all(parts) if parts else None
        if area is None or area.is_empty or area.area <= 0:
            raise LabelError(f"{source}: feature {int(rows[j])} is an invalid polygon with no area")
        out[j] = area
        reason = shapely.is_valid_reason(geoms[j])
        print(
            f"warning: {source}: feature {int(rows[j])} ({reason}) repaired with make_valid",
            file=sys.stderr,
        )
    return out


def _check_classes(gdf: gpd.GeoDataFrame, pos: np.ndarray, source: str) -> None:
    if "class" not in gdf:
        raise LabelError(f"{source}: no 'class' field; positives need one (e.g. vehicle)")
    cls = gdf["class"].map(_text).to_numpy()
    bad = pos & (cls == "")
    if bad.any():
        raise LabelError(f"{source}: feature {int(np.argmax(bad))} is a positive without a class")


def _text(value: object) -> str:
    """A field value as stripped text; '' for null (None, NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _rectangle_mask(geoms: np.ndarray, crs: CRS | None) -> np.ndarray:
    """Which geometries are rectangles on the ground.

    Degrees are not square (a rotated rectangle is a parallelogram in lon/lat), so geographic
    coordinates are checked in a transverse Mercator centred on the data: conformal, so small
    rectangles stay rectangles anywhere on Earth.
    """
    corners, ok = quad_corners(geoms)
    if crs is not None and crs.is_geographic and ok.any():
        lon, lat = corners[ok][..., 0], corners[ok][..., 1]
        if np.abs(lon).max() <= 360 and np.abs(lat).max() <= 90:  # else not degrees: as is
            local = CRS.from_proj4(
                f"+proj=tmerc +lon_0={np.median(lon):.6f} +lat_0={np.median(lat):.6f} +units=m"
            )
            to_local = Transformer.from_crs(crs, local, always_xy=True)
            x, y = to_local.transform(lon, lat)
            corners[ok] = np.stack([x, y], axis=-1)
    ok[ok] = geometry.is_rectangle(corners[ok], RECT_RTOL)
    return ok


def _headings(values: pd.Series, source: str) -> np.ndarray:
    h = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    typed = values.map(lambda v: v is not None and not (isinstance(v, float) and np.isnan(v)))
    bad = np.isnan(h) & typed.to_numpy(bool) & (values.astype(str).str.strip() != "").to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise LabelError(f"{source}: feature {i} has heading_deg {values.iloc[i]!r}, not a number")
    return geometry.wrap_heading(h)


def _declares_crs(path: Path) -> bool:
    """Does a GeoJSON file carry a (pre-RFC 7946) `crs` member before its features?"""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    cut = head.find(b'"features"')
    return b'"crs"' in (head if cut < 0 else head[:cut])


def write_vector(gdf: gpd.GeoDataFrame, path: str | Path) -> Path:
    """Write atomically; driver by extension (.gpkg, .geojson, .shp and its sidecars).

    Returns the final path. A missing folder or an unknown extension is an InputError and
    leaves nothing behind.
    """
    final = check_out_dir(path)
    driver = _driver(final)
    gdf = gdf if isinstance(gdf, gpd.GeoDataFrame) else gpd.GeoDataFrame(gdf)
    if driver == "ESRI Shapefile":
        _write_shapefile(gdf, final)
        return final
    with atomic_path(final) as tmp:
        _to_file(gdf, tmp, driver, final.stem)
    return final


_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".shp": "ESRI Shapefile"}
_KNOWN_FIELDS = ("label", "class", "image", *DETECTION_FIELDS)
_DIR_FORMATS = {".gdb"}  # vector "files" that are folders
_SHP_PARTS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")


def _driver(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in _DRIVERS:
        return _DRIVERS[ext]
    try:
        return pyogrio.detect_write_driver(str(path))
    except Exception:  # noqa: BLE001 - pyogrio says "could not infer driver" in several ways
        raise InputError(
            f"{path}: unknown vector format {ext or '(no extension)'}; use .gpkg, .geojson or .shp"
        ) from None


def _to_file(gdf: gpd.GeoDataFrame, path: Path, driver: str, layer: str) -> None:
    kwargs = {} if driver == "ESRI Shapefile" else {"layer": layer}  # shapefiles: the file name
    try:
        with warnings.catch_warnings(), _fixed_gpkg_date():
            warnings.simplefilter("ignore")  # "laundered field name": undone by read_vector
            # keep Polygon positives Polygon beside MultiPolygon negatives (no promotion to multi)
            pyogrio.write_dataframe(gdf, path, driver=driver, promote_to_multi=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - one line for the user, not a GDAL traceback
        raise LabelError(f"{path}: cannot write {driver} ({_one_line(err)})") from None


@contextlib.contextmanager
def _fixed_gpkg_date() -> Iterator[None]:
    """GeoPackages stamp the write time; a fixed stamp keeps same-seed outputs byte-identical.

    A user's own OGR_CURRENT_DATE wins.
    """
    if pyogrio.get_gdal_config_option("OGR_CURRENT_DATE") is not None:
        yield
        return
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


def _one_line(err: Exception) -> str:
    """GDAL's message without its advice on driver prefixes, on one line."""
    text = str(err).split("; It might help")[0].strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_shapefile(gdf: gpd.GeoDataFrame, final: Path) -> None:
    """A shapefile is several files: write them in a hidden temp folder, fsync, then swap.

    Renames cannot replace several files at once, so the old parts are first moved into the
    temp folder; if any step of the swap fails they are moved back, so a reader sees either
    the whole old shapefile or the whole new one (a kill -9 mid-swap can still mix them).
    """
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.stem}.", dir=final.parent))
    old = tmpdir / "old"
    old.mkdir()
    exts = (*_SHP_PARTS, final.suffix)  # the .shp last: it is what readers look for
    moved: list[str] = []  # old parts taken out of the way
    placed: list[str] = []  # new parts put in
    try:
        tmp = tmpdir / final.name
        _to_file(gdf, tmp, "ESRI Shapefile", final.stem)
        for ext in exts:
            if tmp.with_suffix(ext).exists():
                fsync_file(tmp.with_suffix(ext))
        try:
            for ext in reversed(exts):  # the .shp first out: readers stop seeing the old one
                if final.with_suffix(ext).exists():
                    os.replace(final.with_suffix(ext), old / ext)
                    moved.append(ext)
            for ext in exts:
                if tmp.with_suffix(ext).exists():
                    os.replace(tmp.with_suffix(ext), final.with_suffix(ext))
                    placed.append(ext)
        except BaseException:
            for ext in placed:  # back to the old file, whole
                final.with_suffix(ext).unlink(missing_ok=True)
            for ext in moved:
                os.replace(old / ext, final.with_suffix(ext))
            raise
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def labels_for_grid(
    gdf: gpd.GeoDataFrame, grid: Grid, image_name: str | None = None
) -> SceneLabels:
    """Reproject labels to the grid's CRS and convert to its pixel frame, keeping those on the grid.

    Rows whose `image` names another scene are dropped. Raises CRSError when the file has no
    CRS but the grid has one (or the reverse), LabelError for invalid labels.
    """
    source = gdf.attrs.get("source", "labels")
    gdf = _to_grid_crs(validate_labels(gdf, source), grid, source, image_name)
    if image_name and "image" in gdf and len(gdf):
        names = gdf["image"].map(_file_name)
        gdf = gdf[(names.isna() | (names == _file_name(image_name))).to_numpy()]
    geoms = affine_geoms(gdf.geometry.to_numpy(), ~grid.transform)
    on_grid = shapely.intersects(geoms, shapely.box(0, 0, grid.width, grid.height))
    pos = (gdf["label"] == "positive").to_numpy() & on_grid
    neg = (gdf["label"] == "negative").to_numpy() & on_grid
    try:
        boxes, _ = polygon_boxes(gdf.geometry.to_numpy()[pos], grid.transform)
    except NotRectangle as err:
        i = gdf.index[np.nonzero(pos)[0][err.index]]
        raise LabelError(f"{source}: feature {i} is not a rectangle on this scene's grid") from None
    heads = np.full(int(pos.sum()), np.nan)
    if "heading_deg" in gdf:
        h_map = gdf["heading_deg"].to_numpy(np.float64)[pos]
        heads = heading_to_pixel(h_map, grid.transform, georeferenced=grid.crs is not None)
    return SceneLabels(
        boxes=boxes,
        classes=[_text(c) for c in gdf["class"].to_numpy()[pos]] if pos.any() else [],
        headings=heads,
        negatives=list(geoms[neg]),
        feature_ids=[int(i) for i in gdf.index[pos]],
    )


def _to_grid_crs(
    gdf: gpd.GeoDataFrame, grid: Grid, source: str, image_name: str | None
) -> gpd.GeoDataFrame:
    scene = image_name or "the scene"
    if gdf.crs is not None and grid.crs is None:
        if gdf.attrs.get("crs_assumed"):  # GeoJSON without a crs member, drawn in pixels
            return gdf.set_crs(None, allow_override=True)
        raise CRSError(
            f"{source} is in {_crs_name(gdf.crs)} but {scene} has no CRS; georeference the "
            "scene (gdal_edit.py -a_srs ...) or label it in pixel coordinates (no CRS)"
        )
    if gdf.crs is None and grid.crs is not None:
        name = _crs_name(grid.crs)
        raise CRSError(
            f"{source} has no CRS but {scene} is in {name}; set the labels' CRS with "
            f"ogr2ogr -a_srs {name} fixed.gpkg {source}"
        )
    if gdf.attrs.get("crs_assumed") and len(gdf):
        left, bottom, right, top = gdf.total_bounds
        if min(left, bottom) < -180 or right > 180 or top > 90:
            raise CRSError(
                f"{source} has no crs member, which in GeoJSON means lon/lat (EPSG:4326), but "
                f"its coordinates are not lon/lat; add a crs or save it as GeoPackage with one"
            )
    if gdf.crs is not None and not gdf.crs.equals(grid.crs):
        from geodetect.north import reproject_detections

        gdf = reproject_detections(gdf, grid.crs)  # headings turned to the grid's north
    return gdf


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "'" + crs.to_string() + "'"


def _file_name(value: object) -> str | None:
    """The file name of an `image` field (paths from any OS), None when unset."""
    if not isinstance(value, str) or not value.strip():
        return None
    return PurePath(value.strip().replace("\\", "/")).name
