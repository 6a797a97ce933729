"""Merging detections: across tiles and tasks by rotated-polygon IoU, in a stable order.

Boxes in map frames (y north) are compared after mirroring y (`boxes.table_boxes`): a global
mirror keeps every IoU and, with the y-down angle convention, every angle, so geometry's
pixel-frame maths applies unchanged. Files without a CRS are already in rasterio's y-down
pixel frame.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from geodetect import geometry
from geodetect.boxes import DETECTION_FIELDS, table_boxes
from geodetect.errors import CRSError


def empty_detections(crs: Any = None) -> gpd.GeoDataFrame:
    """A detections frame with the contract's columns and no rows (typed for writing)."""
    cols = {
        "class": pd.Series([], dtype=object),
        "score": pd.Series([], dtype=float),
        "angle_deg": pd.Series([], dtype=float),
        "heading_deg": pd.Series([], dtype=float),
        "length_m": pd.Series([], dtype=float),
        "width_m": pd.Series([], dtype=float),
        "image": pd.Series([], dtype=object),
    }
    return gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def sort_detections(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Deterministic order: image, class, descending score, then north to south, west to east."""
    if len(gdf) == 0:
        return gdf.reset_index(drop=True)
    c = gdf.geometry.centroid
    y = c.y.to_numpy()
    ys = -y if gdf.crs is not None else y  # north first in either frame
    order = np.lexsort(
        (
            np.round(c.x.to_numpy(), 6),
            np.round(ys, 6),
            -gdf["score"].to_numpy(float),
            gdf["class"].astype(str).to_numpy(),
            gdf["image"].astype(str).to_numpy(),
        )
    )
    return gdf.iloc[order].reset_index(drop=True)


def merge_detections(
    frames: list[gpd.GeoDataFrame], nms_iou: float, crs: Any = None
) -> gpd.GeoDataFrame:
    """One detections frame from per-task frames: reprojected to `crs` (default: the first
    frame's; angles and headings turned to its grid north), duplicates from overlapping tasks
    removed per scene and class by rotated NMS. A scene is its full path or URL
    (`frame.attrs["scene"]`, set by infer), so scenes that share a file name (STAC assets
    all called TCI.tif) are not merged together; the `image` column when absent. CRSError
    when CRS-less and georeferenced frames are mixed."""
    from geodetect.north import reproject_detections

    frames = [f for f in frames if f is not None]
    if crs is None and frames:
        crs = frames[0].crs
    if frames and any((f.crs is None) != (crs is None) for f in frames):
        # pixel coordinates would be written as if they were map coordinates
        raise CRSError(
            "scenes with and without a CRS cannot go into one detections file; "
            "run them into separate --out files"
        )
    scenes = [
        np.full(len(f), f.attrs["scene"], dtype=object)
        if isinstance(f.attrs.get("scene"), str)
        else f["image"].astype(str).to_numpy(object)
        for f in frames
        if len(f)
    ]
    parts = [reproject_detections(f, crs) for f in frames]
    parts = [f for f in parts if len(f)]
    if not parts:
        return empty_detections(crs)
    gdf = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=crs)
    gdf = gdf[[*DETECTION_FIELDS, "geometry"]]
    keys = pd.Series(np.concatenate(scenes), index=gdf.index) + "\x00" + gdf["class"].astype(str)
    _, codes = np.unique(keys.to_numpy(), return_inverse=True)
    keep = geometry.rotated_nms(
        table_boxes(gdf), gdf["score"].to_numpy(float), nms_iou, classes=codes
    )
    return sort_detections(gdf.iloc[np.sort(np.asarray(keep, np.int64))])
