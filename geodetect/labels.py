"""Label and detection vector files (contract tables), CRS handling, box <-> polygon.

Read with pyogrio/geopandas, written atomically by extension (.gpkg default, .geojson, .shp).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
from affine import Affine
from shapely.geometry.base import BaseGeometry

from geodetect.atomic import atomic_path, check_out_dir
from geodetect.errors import InputError, LabelError
from geodetect.raster import Grid

DETECTION_FIELDS = ["class", "score", "angle_deg", "heading_deg", "length_m", "width_m", "image"]


@dataclass
class SceneLabels:
    """The labels of one scene, in that scene grid's pixel frame."""

    boxes: np.ndarray  # (N, 5) [cx, cy, length, width, angle_deg] pixel frame
    classes: list[str]  # (N,)
    headings: np.ndarray  # (N,) degrees, NaN where the class has no front
    negatives: list[BaseGeometry] = field(default_factory=list)  # polygons, pixel frame
    feature_ids: list[int] = field(default_factory=list)  # row index in the source file, for messages


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
    if gdf.crs is None and p.suffix.lower() in (".geojson", ".json"):
        gdf = gdf.set_crs("EPSG:4326")  # RFC 7946: GeoJSON without a CRS is WGS 84
    if p.suffix.lower() == ".shp":  # dBase cuts names at 10 characters: heading_deg -> heading_de
        cut = {f[:10]: f for f in _KNOWN_FIELDS if len(f) > 10}
        gdf = gdf.rename(columns={c: cut[c] for c in gdf.columns if c in cut and cut[c] not in gdf})
    return gdf


def read_labels(path: str | Path) -> gpd.GeoDataFrame:
    """Read and validate a label file (fields, 4-corner positives, classes)."""
    raise NotImplementedError


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
    kwargs = {"layer": layer} if driver == "GPKG" else {}
    try:
        # keep Polygon positives Polygon beside MultiPolygon negatives (no promotion to multi)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "laundered field name": undone by read_vector
            pyogrio.write_dataframe(gdf, path, driver=driver, promote_to_multi=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - one line for the user, not a GDAL traceback
        raise LabelError(f"{path}: cannot write {driver} ({_one_line(err)})") from None


def _one_line(err: Exception) -> str:
    """GDAL's message without its advice on driver prefixes, on one line."""
    text = str(err).split("; It might help")[0].strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_shapefile(gdf: gpd.GeoDataFrame, final: Path) -> None:
    """A shapefile is several files: write them in a hidden temp folder, then move each."""
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.stem}.", dir=final.parent))
    try:
        tmp = tmpdir / final.name
        _to_file(gdf, tmp, "ESRI Shapefile", final.stem)
        for ext in _SHP_PARTS:  # sidecars first, the .shp last: it is what readers look for
            src, dst = tmp.with_suffix(ext), final.with_suffix(ext)
            if src.exists():
                os.replace(src, dst)
            elif dst.exists():
                dst.unlink()  # a stale .prj/.cpg from an older file would lie about this one
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def labels_for_grid(gdf: gpd.GeoDataFrame, grid: Grid, image_name: str | None = None) -> SceneLabels:
    """Reproject labels to the grid's CRS and convert to its pixel frame, keeping those on the grid.

    Rows whose `image` names another scene are dropped. Raises CRSError when the file has no
    CRS but the grid has one.
    """
    raise NotImplementedError


def boxes_to_polygons(boxes_px: np.ndarray, transform: Affine, headings_px: np.ndarray | None = None) -> list:
    """Pixel-frame boxes -> shapely Polygons in map coordinates (corner order kept)."""
    raise NotImplementedError


def polygons_to_boxes(polygons: list, transform: Affine) -> tuple[np.ndarray, np.ndarray]:
    """Map-frame 4-corner polygons -> pixel-frame boxes (N, 5) and headings implied by corner order."""
    raise NotImplementedError


def detections_frame(
    boxes_px: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    headings_px: np.ndarray,
    grid: Grid,
    image: str,
) -> gpd.GeoDataFrame:
    """Detections in the contract's schema, in the grid's CRS (angles/headings converted to map)."""
    raise NotImplementedError
