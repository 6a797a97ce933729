"""Label and detection tables <-> oriented boxes, across CRSs and pixel frames.

The half of the contract tables that `labels.py` (files, validation) hands on: rectangle
polygons to boxes `[cx, cy, length, width, angle_deg]` and back, headings between a grid's
pixel frame and its map frame, and the detection / label tables built from pixel boxes.

`polygon_boxes` is the one polygon -> box converter (merge, evaluate, convert, the label reader
and the plugin all call it) and `corner_boxes` its core for corner lists (other tools' formats);
both accept a rectangle to RECT_RTOL, one tolerance everywhere: a rectangle the label reader
takes must also merge, evaluate and convert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine

from geodetect import geometry

if TYPE_CHECKING:
    from geodetect.raster import Grid

DETECTION_FIELDS = ["class", "score", "angle_deg", "heading_deg", "length_m", "width_m", "image"]
# Sides and right angles to 5 % of the longest side: hand-drawn rectangles (QGIS, napari) are
# rarely square to the last digit, and a reprojected one skews a little.
RECT_RTOL = 0.05
# Map coordinates (y north) as a y-down frame of the same units: a global mirror keeps every
# IoU and, with the y-down angle convention, every angle, so pixel-frame maths applies.
MIRROR = Affine.scale(1.0, -1.0)


class NotRectangle(ValueError):
    """A polygon (or corner list) that is not a 4-corner rectangle; `index` is its position."""

    def __init__(self, index: int, what: str = "polygon"):
        verb = "are" if what == "corners" else "is"
        super().__init__(f"{what} {index} {verb} not a 4-corner rectangle")
        self.index = index


def single_polygons(geoms: np.ndarray) -> np.ndarray:
    """MultiPolygons of one part (QGIS layers are often multi) as Polygons, repeats removed."""
    geoms = np.asarray(geoms, dtype=object)
    multi1 = (shapely.get_type_id(geoms) == 6) & (shapely.get_num_geometries(geoms) == 1)
    out = geoms.copy()
    out[multi1] = shapely.get_geometry(geoms[multi1], 0)
    return shapely.remove_repeated_points(out)


def quad_corners(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exterior corners (N, 4, 2) of 4-corner Polygons without holes, and which ones are such."""
    geoms = np.asarray(geoms, dtype=object)
    ok = (
        (shapely.get_type_id(geoms) == 3)
        & (shapely.get_num_interior_rings(geoms) == 0)
        & (shapely.get_num_coordinates(geoms) == 5)
    )
    corners = np.full((len(geoms), 4, 2), np.nan)
    if ok.any():
        ring = shapely.get_coordinates(shapely.get_exterior_ring(geoms[ok]))
        corners[ok] = ring.reshape(-1, 5, 2)[:, :4]
    return corners, ok


def corner_boxes(corners: np.ndarray, y_down: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 5) and corner-order headings (N,) of (N, 4, 2) rectangle corners, to RECT_RTOL.

    Raises NotRectangle (a ValueError) naming the first corner list that is not a rectangle.
    """
    c = np.asarray(corners, np.float64).reshape(-1, 4, 2)
    bad = np.nonzero(~geometry.is_rectangle(c, RECT_RTOL))[0]
    if len(bad):
        raise NotRectangle(int(bad[0]), "corners")
    return geometry.boxes_from_corners(c, y_down=y_down, rtol=RECT_RTOL)


def polygon_boxes(
    polygons: object, transform: Affine | None = None, y_down: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """4-corner rectangle polygons -> boxes (N, 5) and the headings their corner order implies.

    With `transform` (a grid's pixel -> map affine) the boxes are in that grid's pixel frame;
    without, in the polygons' own coordinates, where `y_down` says which way y grows. One-part
    MultiPolygons count as Polygons. Raises NotRectangle (a ValueError) naming the first
    polygon (0-based) that is not a 4-corner rectangle to RECT_RTOL.
    """
    geoms = single_polygons(np.asarray(list(polygons), dtype=object).reshape(-1))
    corners, ok = quad_corners(geoms)
    if not ok.all():
        raise NotRectangle(int(np.argmin(ok)))
    if transform is not None:
        inv = ~transform
        corners = corners @ _linear(inv).T + [inv.c, inv.f]
    try:
        return corner_boxes(corners, y_down=y_down)
    except NotRectangle as err:
        raise NotRectangle(err.index) from None


def table_boxes(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Boxes (N, 5) of a table's rectangles in a y-down frame (map y mirrored, see MIRROR).

    What merge and evaluate compare: IoUs and angles as in the map, pixel-frame maths.
    """
    if len(gdf) == 0:
        return np.zeros((0, 5))
    return polygon_boxes(gdf.geometry.to_numpy(), MIRROR if gdf.crs is not None else None)[0]


def affine_geoms(geoms: np.ndarray, aff: Affine) -> np.ndarray:
    """Geometries with an affine transform applied to every coordinate (vectorised)."""
    m = _linear(aff)
    off = np.array([aff.c, aff.f])
    return shapely.transform(geoms, lambda xy: xy @ m.T + off)


def _linear(aff: Affine) -> np.ndarray:
    return np.array([[aff.a, aff.b], [aff.d, aff.e]])


def heading_to_map(
    headings_px: np.ndarray, transform: Affine, georeferenced: bool = True
) -> np.ndarray:
    """Pixel-frame angles/headings -> the map frame through the transform (rotation-aware).

    Without a CRS the map frame is the pixel frame (y down). NaN stays NaN.
    """
    v = geometry.direction(headings_px, y_down=True) @ _linear(transform).T
    return geometry.vector_angle(v, y_down=not georeferenced)


def heading_to_pixel(
    headings_map: np.ndarray, transform: Affine, georeferenced: bool = True
) -> np.ndarray:
    """Map-frame angles/headings -> the pixel frame of `transform`. NaN stays NaN."""
    v = geometry.direction(headings_map, y_down=not georeferenced)
    return geometry.vector_angle(v @ np.linalg.inv(_linear(transform)).T, y_down=True)


def boxes_to_polygons(
    boxes_px: np.ndarray, transform: Affine, headings_px: np.ndarray | None = None
) -> list:
    """Pixel-frame boxes -> shapely Polygons in map coordinates (corner order kept)."""
    corners = geometry.box_corners(boxes_px, y_down=True, headings=headings_px)
    return list(shapely.polygons(corners @ _linear(transform).T + [transform.c, transform.f]))


def detections_frame(
    boxes_px: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    headings_px: np.ndarray,
    grid: Grid,
    image: str,
) -> gpd.GeoDataFrame:
    """Detections in the contract's schema, in the grid's CRS (angles/headings converted to map).

    Lengths and angles go through the transform's linear part, so rotated grids are exact.
    """
    boxes = np.asarray(boxes_px, np.float64).reshape(-1, 5)
    heads = np.asarray(headings_px, np.float64).reshape(-1)
    georef = grid.crs is not None
    m = _linear(grid.transform)
    along = geometry.direction(boxes[:, 4], y_down=True) @ m.T * boxes[:, 2:3]
    across = geometry.direction(boxes[:, 4] + 90.0, y_down=True) @ m.T * boxes[:, 3:4]
    length, width = np.linalg.norm(along, axis=1), np.linalg.norm(across, axis=1)
    long_axis = np.where((length >= width)[:, None], along, across)
    cols = {
        "class": pd.Series([str(c) for c in classes], dtype=object),
        "score": pd.Series(np.asarray(scores, np.float64).reshape(-1), dtype=float),
        "angle_deg": geometry.wrap_angle(geometry.vector_angle(long_axis, y_down=not georef)),
        "heading_deg": heading_to_map(heads, grid.transform, georeferenced=georef),
        "length_m": np.maximum(length, width),
        "width_m": np.minimum(length, width),
        "image": pd.Series([str(image)] * len(boxes), dtype=object),
    }
    polys = gpd.GeoSeries(boxes_to_polygons(boxes, grid.transform, heads), crs=grid.crs)
    return gpd.GeoDataFrame(cols, geometry=polys, crs=grid.crs)[[*DETECTION_FIELDS, "geometry"]]


def labels_frame(
    boxes_px: np.ndarray,
    classes: list[str],
    headings_px: np.ndarray | None,
    negatives_px: list,
    grid: Grid,
    image: str | None = None,
) -> gpd.GeoDataFrame:
    """A contract label table (positives, then negatives) in the grid's CRS from pixel shapes."""
    boxes = np.asarray(boxes_px, np.float64).reshape(-1, 5)
    heads = (
        np.full(len(boxes), np.nan)
        if headings_px is None
        else np.asarray(headings_px, np.float64).reshape(-1)
    )
    h_map = heading_to_map(heads, grid.transform, georeferenced=grid.crs is not None)
    pos = boxes_to_polygons(boxes, grid.transform, heads)
    neg = list(affine_geoms(np.asarray(list(negatives_px), dtype=object), grid.transform))
    n_pos, n_neg = len(pos), len(neg)
    df = pd.DataFrame(
        {
            "label": ["positive"] * n_pos + ["negative"] * n_neg,
            "class": [str(c) for c in classes] + [None] * n_neg,
            "image": [image] * (n_pos + n_neg),
            "heading_deg": np.concatenate([h_map, np.full(n_neg, np.nan)]),
        }
    )
    return gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(pos + neg, crs=grid.crs), crs=grid.crs)
