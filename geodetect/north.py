"""Grid north vs true north: the one owner of turning angles and headings between CRSs.

An angle or heading is measured clockwise from *grid* north, so moving a feature to another
CRS turns it by the difference of the two grids' meridian convergence at that place (several
degrees between neighbouring UTM zones at high latitude). evaluate, merge, convert, the label
reader (`labels_for_grid`), the plugin and infer's output all turn through here.

Headings snap: where the feature's rectangle in the new CRS is known (its `angle_deg`, or the
box of its reprojected polygon), the turned heading is put on the nearest side of it (angle +
0, 90, 180 or 270). The heading only says which side is the front (DESIGN.md: `heading % 180
== angle` for a front on the long axis); the polygon carries the direction itself, and the
convergence turn can miss it by a little where the projection is not conformal.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from geodetect import geometry


def true_north(crs: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Grid bearing (clockwise from grid north) of true north at map points (x, y) of `crs`.

    Measured numerically (a step north in lon/lat, projected back), so it holds for any CRS
    with a geodetic base; 0 for geographic CRSs and for local frames without one.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    geo = crs.geodetic_crs
    if crs.is_geographic or geo is None or len(x) == 0:
        return np.zeros(len(x))
    lon, lat = Transformer.from_crs(crs, geo, always_xy=True).transform(x, y)
    step = np.where(np.asarray(lat) > 89.0, -1e-4, 1e-4)  # next to the pole, step south
    x2, y2 = Transformer.from_crs(geo, crs, always_xy=True).transform(lon, lat + step)
    v = np.stack([np.asarray(x2) - x, np.asarray(y2) - y], axis=-1) * np.sign(step)[:, None]
    return geometry.vector_angle(v, y_down=False)


def turn(src: gpd.GeoDataFrame, dst: gpd.GeoDataFrame) -> np.ndarray:
    """Degrees to add to each feature's angle/heading when it moves from src's CRS to dst's
    (dst = src reprojected, same rows)."""
    sc = shapely.get_coordinates(shapely.centroid(src.geometry.to_numpy()))
    dc = shapely.get_coordinates(shapely.centroid(dst.geometry.to_numpy()))
    return true_north(dst.crs, *dc.T) - true_north(src.crs, *sc.T)


def turn_headings(
    headings: np.ndarray,
    src: gpd.GeoDataFrame,
    dst: gpd.GeoDataFrame,
    angles: np.ndarray | None = None,
) -> np.ndarray:
    """Headings of src's features in dst's CRS (dst = src reprojected, same rows), in [0, 360).

    Turned by `turn`; with `angles` (the rectangles' long-axis angles in dst) each is then
    snapped to the nearest side of its rectangle. NaN stays NaN.
    """
    return _turned(headings, turn(src, dst), angles)


def _turned(headings: np.ndarray, t: np.ndarray, angles: np.ndarray | None) -> np.ndarray:
    h = np.asarray(headings, np.float64).reshape(-1)
    fin = np.isfinite(h)
    if not fin.any():
        return h
    moved = geometry.wrap_heading(h + t)
    if angles is not None:
        a = np.asarray(angles, np.float64).reshape(-1)
        sides = np.round(geometry.wrap_heading(moved - a) / 90.0)
        moved = np.where(np.isfinite(a), geometry.wrap_heading(a + 90.0 * sides), moved)
    return np.where(fin, moved, np.nan)


def reproject_detections(gdf: gpd.GeoDataFrame, crs: Any) -> gpd.GeoDataFrame:
    """A detections (or labels) frame in `crs`, `angle_deg` / `heading_deg` turned to its
    grid north (whichever of the two the frame has; empty headings stay empty). With both,
    the heading snaps to a side of the turned angle (`turn_headings`).

    Lengths stay as they were (metres in both CRSs, scale factors aside).
    """
    if gdf.crs is None or crs is None or gdf.crs == crs:
        return gdf
    moved = gdf.to_crs(crs)
    if len(moved) == 0:
        return moved
    t = turn(gdf, moved)
    angles = None
    if "angle_deg" in moved.columns:
        a = pd.to_numeric(moved["angle_deg"], errors="coerce").to_numpy(float)
        angles = geometry.wrap_angle(a + t)
        moved["angle_deg"] = angles
    if "heading_deg" in moved.columns:
        h = pd.to_numeric(moved["heading_deg"], errors="coerce").to_numpy(float)
        moved["heading_deg"] = _turned(h, t, angles)
    return moved
