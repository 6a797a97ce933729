"""Areas of interest: process only the tiles that meet polygons, keep only what lies inside.

`infer --aoi POLYGONS` (any vector file, any CRS) and the napari plugin's "Detect in view"
(a rectangle in the scene's CRS) go through the same two steps: `clip_task` drops every tile
that does not meet the area before anything is read, and `keep_inside` keeps a detection only
when its centre is inside. The area travels with each task as shapely geometry in the
task's working CRS, so workers need neither the file nor pyproj.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from geodetect.errors import CRSError, InputError


class OutsideError(InputError):
    """The area of interest meets none of the scenes (nothing to read)."""


@dataclasses.dataclass(frozen=True)
class Area:
    """Polygons and their CRS (None: the scene's pixel frame, for CRS-less scenes)."""

    geometry: Any  # one shapely (Multi)Polygon
    crs: Any
    source: str  # for messages: the file name, or "region"
    crs_assumed: bool = False  # a GeoJSON without a crs member: pixels for a CRS-less scene


def load_area(aoi: Any) -> Area:
    """An Area from a vector file path, a GeoDataFrame / GeoSeries, an Area, or a dict
    {"bounds": (left, bottom, right, top), "crs": WKT} (the plugin's visible region)."""
    if aoi is None or isinstance(aoi, Area):
        return aoi
    if isinstance(aoi, dict):
        return Area(shapely.box(*map(float, aoi["bounds"])), aoi.get("crs"), "region")
    if isinstance(aoi, (gpd.GeoDataFrame, gpd.GeoSeries)):
        geoms = aoi if isinstance(aoi, gpd.GeoSeries) else aoi.geometry
        crs, source, assumed = aoi.crs, "aoi", False
    else:
        from geodetect.errors import LabelError
        from geodetect.labels import read_vector

        try:
            frame = read_vector(aoi)
        except LabelError as exc:
            raise InputError(f"--aoi {exc}") from None
        geoms, crs, source = frame.geometry, frame.crs, Path(str(aoi)).name
        assumed = bool(frame.attrs.get("crs_assumed"))
    polys = [g for g in shapely.get_parts(np.asarray(geoms)) if g is not None and not g.is_empty]
    polys = [g for g in polys if shapely.get_type_id(g) in (3, 6)]
    if not polys:
        raise InputError(f"--aoi {source}: has no polygons; give the area as polygons")
    return Area(shapely.make_valid(shapely.union_all(polys)), crs, source, assumed)


def in_crs(area: Area, crs: Any) -> Any:
    """The area's geometry in `crs` (a scene's working CRS; None for a pixel frame)."""
    if crs is None and area.crs_assumed:
        return area.geometry  # rasterio's pixel frame, as for label files
    if crs is None and area.crs is not None:
        raise CRSError(f"--aoi {area.source}: has a CRS but the scene has none")
    if crs is not None and area.crs is None:
        raise CRSError(f"--aoi {area.source}: has no CRS; give the area in a CRS (.gpkg)")
    if crs is None:
        return area.geometry
    return gpd.GeoSeries([area.geometry], crs=area.crs).to_crs(crs).iloc[0]


def clip_task(task: Any, geom: Any) -> Any:
    """The task with only the tiles that meet `geom` (in the task's working CRS), and the
    area attached so its detections can be kept by centre."""
    g, t = task.grid, task.tile
    cols = np.array([c for c, _ in task.windows], np.float64)
    rows = np.array([r for _, r in task.windows], np.float64)
    if len(cols) == 0:
        return dataclasses.replace(task, aoi=geom)
    tf = g.transform
    corners = [tf * (cols + dc, rows + dr) for dc, dr in ((0, 0), (t, 0), (t, t), (0, t))]
    xs = np.stack([c[0] for c in corners], axis=1)
    ys = np.stack([c[1] for c in corners], axis=1)
    tiles = shapely.polygons(np.stack([xs, ys], axis=-1))
    shapely.prepare(geom)  # in place: many tiles against one area
    meets = shapely.intersects(geom, tiles)
    wins = tuple(w for w, ok in zip(task.windows, meets, strict=True) if ok)
    return dataclasses.replace(task, windows=wins, aoi=geom)


def keep_inside(frame: gpd.GeoDataFrame, geom: Any) -> gpd.GeoDataFrame:
    """Detections whose centre lies inside the area (its boundary counts as inside)."""
    if geom is None or len(frame) == 0:
        return frame
    centres = shapely.centroid(frame.geometry.to_numpy())
    inside = shapely.intersects(geom, centres)
    kept = frame[inside].reset_index(drop=True)
    kept.attrs.update(frame.attrs)
    return kept
