"""Label and detection vector files (contract tables), CRS handling, box <-> polygon.

Read with pyogrio/geopandas, written atomically by extension (.gpkg default, .geojson, .shp).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
from affine import Affine
from shapely.geometry.base import BaseGeometry

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
    raise NotImplementedError


def read_labels(path: str | Path) -> gpd.GeoDataFrame:
    """Read and validate a label file (fields, 4-corner positives, classes)."""
    raise NotImplementedError


def write_vector(gdf: gpd.GeoDataFrame, path: str | Path) -> Path:
    """Write atomically; driver by extension (.gpkg, .geojson, .shp and its sidecars)."""
    raise NotImplementedError


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
