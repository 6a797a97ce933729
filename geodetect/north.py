"""Grid north vs true north: the one owner of turning angles and headings between CRSs.

An angle or heading is measured clockwise from *grid* north, so moving a feature to another
CRS turns it by the difference of the two grids' meridian convergence at that place (several
degrees between neighbouring UTM zones at high latitude). evaluate, merge and infer's output
all turn through here.
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


def reproject_detections(gdf: gpd.GeoDataFrame, crs: Any) -> gpd.GeoDataFrame:
    """A detections (or labels) frame in `crs`, `angle_deg` / `heading_deg` turned to its
    grid north (whichever of the two the frame has; empty headings stay empty).

    Lengths stay as they were (metres in both CRSs, scale factors aside).
    """
    if gdf.crs is None or crs is None or gdf.crs == crs:
        return gdf
    moved = gdf.to_crs(crs)
    if len(moved) == 0:
        return moved
    t = turn(gdf, moved)
    for col, period in (("angle_deg", 180.0), ("heading_deg", 360.0)):
        if col in moved.columns:
            moved[col] = (pd.to_numeric(moved[col], errors="coerce").to_numpy(float) + t) % period
    return moved
