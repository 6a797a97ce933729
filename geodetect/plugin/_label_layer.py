"""Label layers <-> the contract's label file, through the core's box and vector functions.

A positive is a 4-vertex polygon in a Shapes layer, vertices ordered front-left, front-right,
back-right, back-left (DESIGN.md), so its heading is implied by vertex order and survives any
napari edit that keeps the order. Features carry `class` and `heading_deg` (map frame, NaN
for classes without a front). Negatives are polygons. All label layers are in the world frame
of `_coords` with a pure translate (the reference scene's top-left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import MultiPolygon, Polygon

from geodetect import geometry
from geodetect.plugin._coords import KEY, data_to_map, map_to_data, world_origin

POSITIVES, NEGATIVES, HEADINGS, DETECTIONS = "positives", "negatives", "headings", "detections"
BOX_COLS = ["cx", "cy", "length", "width", "angle"]  # float64 copy of each box, map frame
DETECTION_HEADINGS = "detection headings"


@dataclass(frozen=True)
class LabelFrame:
    """Where a label session lives: the reference scene's CRS, translate and file name."""

    georeferenced: bool
    crs: str | None  # WKT
    translate: tuple[float, float]  # world (row, col) of the label layers' data origin
    image: str | None = None  # scene file name for the `image` field
    scene_path: str | None = None

    @property
    def y_down(self) -> bool:
        return not self.georeferenced

    @classmethod
    def from_meta(cls, meta: dict) -> LabelFrame:
        """From a scene layer's metadata[KEY] (written by the reader)."""
        from affine import Affine

        georef = meta.get("crs") is not None
        path = meta.get("path")
        return cls(
            georeferenced=georef,
            crs=meta.get("crs"),
            translate=world_origin(Affine(*meta["transform"]), georef),
            image=Path(path).name if path and meta.get("kind") == "scene" else None,
            scene_path=path,
        )

    def to_map(self, data_rc: np.ndarray) -> np.ndarray:
        return data_to_map(data_rc, self.translate, self.georeferenced)

    def to_data(self, xy: np.ndarray) -> np.ndarray:
        return map_to_data(xy, self.translate, self.georeferenced)

    def meta(self, kind: str) -> dict:
        return {
            KEY: {
                "kind": kind,
                "crs": self.crs,
                "translate": self.translate,
                "image": self.image,
                "path": self.scene_path,
            }
        }


# ------------------------------------------------------------------------------ box maths


def rectangle_corners(boxes_map: np.ndarray, headings: np.ndarray, frame: LabelFrame) -> np.ndarray:
    """Map-frame corners (N, 4, 2) FL, FR, BR, BL; a NaN heading orders along the angle."""
    boxes_map = np.asarray(boxes_map, np.float64).reshape(-1, 5)
    h = np.asarray(headings, np.float64).reshape(-1)
    h = np.where(np.isfinite(h), h, boxes_map[:, 4])
    return geometry.box_corners(boxes_map, y_down=frame.y_down, headings=h)


def map_boxes(polygons: object, frame: LabelFrame) -> tuple[np.ndarray, np.ndarray]:
    """Map-frame boxes (N, 5) and corner-order headings (N,) of map-frame rectangle polygons:
    the core's one converter (`boxes.polygon_boxes`, its tolerance) in the frame's y sense."""
    from geodetect.boxes import polygon_boxes

    boxes, heads = polygon_boxes(polygons, y_down=frame.y_down)
    return np.asarray(boxes, np.float64), np.asarray(heads, np.float64)


def shape_boxes(shapes: list[np.ndarray], frame: LabelFrame) -> tuple[np.ndarray, np.ndarray]:
    """Map-frame boxes (N, 5) and vertex-order headings (N,) of 4-vertex shapes (data coords)."""
    if not shapes:
        return np.zeros((0, 5)), np.zeros(0)
    corners = np.stack([frame.to_map(np.asarray(s)[:, -2:][:4]) for s in shapes])
    return map_boxes(shapely.polygons(corners), frame)


def _stored_ok(shape: np.ndarray, corners_data: np.ndarray) -> bool:
    """Does a shape still sit on its stored float64 geometry (up to napari's float32 copy)?"""
    v = np.asarray(shape, np.float64)[:, -2:]
    if v.shape != corners_data.shape:
        return False
    return bool(np.abs(v - corners_data).max() <= 1e-6 * (1.0 + np.abs(v).max()))


def positive_boxes(
    shapes: list, feats: pd.DataFrame | None, frame: LabelFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Map-frame boxes and headings of positives, exact where possible.

    napari keeps vertices in float32; the features keep each box in float64 (BOX_COLS). The
    stored box wins while the shape still sits on it; an edited shape is re-measured.
    """
    boxes, heads = shape_boxes(list(shapes), frame)
    if feats is None or not len(shapes) or not set(BOX_COLS) <= set(feats.columns):
        return boxes, heads
    stored = feats[BOX_COLS].to_numpy(np.float64)
    stored_h = pd.to_numeric(feats.get("heading_deg"), errors="coerce").to_numpy(np.float64)
    for i, shape in enumerate(shapes):
        if not np.all(np.isfinite(stored[i])):
            continue
        h = stored_h[i] if np.isfinite(stored_h[i]) else heads[i]
        corners = frame.to_data(rectangle_corners(stored[i][None], np.array([h]), frame)[0])
        if _stored_ok(shape, corners):
            boxes[i], heads[i] = stored[i], h
    return boxes, heads


def with_boxes(feats: pd.DataFrame, boxes: np.ndarray, heads: np.ndarray) -> pd.DataFrame:
    """Features with the float64 box copy and headings written in."""
    out = feats.reset_index(drop=True).copy()
    out["heading_deg"] = np.asarray(heads, np.float64)
    for k, col in enumerate(BOX_COLS):
        out[col] = np.asarray(boxes, np.float64).reshape(-1, 5)[:, k]
    return out


def negative_polygons(shapes: list, feats: pd.DataFrame | None, frame: LabelFrame) -> list:
    """Map-frame polygons of negatives: the stored float64 one (holes kept) while the shape
    sits on it, else the shape's vertices (repaired when self-intersecting)."""
    wkb = list(feats["wkb"]) if feats is not None and "wkb" in feats else [None] * len(shapes)
    out = []
    for shape, hexwkb in zip(shapes, wkb, strict=False):
        if isinstance(hexwkb, str) and hexwkb:
            poly = shapely.from_wkb(hexwkb)
            ring = frame.to_data(np.asarray(poly.exterior.coords)[:-1])
            if _stored_ok(shape, ring):
                out.append(poly)
                continue
        poly = shapely.make_valid(Polygon(frame.to_map(np.asarray(shape)[:, -2:])))
        parts = [g for g in getattr(poly, "geoms", [poly]) if isinstance(g, Polygon)]
        out.append(MultiPolygon(parts) if len(parts) > 1 else (parts[0] if parts else None))
    return out


def negative_shapes(polygons: list, frame: LabelFrame) -> tuple[list, pd.DataFrame]:
    """Shapes (exteriors) and features (exact WKB) for map-frame negative (multi)polygons."""
    shapes, wkb = [], []
    for geom in polygons:
        for poly in getattr(geom, "geoms", [geom]):
            if isinstance(poly, Polygon) and not poly.is_empty:
                shapes.append(frame.to_data(np.asarray(poly.exterior.coords)[:-1]))
                wkb.append(shapely.to_wkb(poly, hex=True))
    return shapes, pd.DataFrame({"wkb": pd.Series(wkb, dtype=object)})


def box_shapes(boxes_map: np.ndarray, headings: np.ndarray, frame: LabelFrame) -> list:
    """Shapes-layer data (list of (4, 2) arrays) for map-frame boxes."""
    corners = rectangle_corners(boxes_map, headings, frame)
    return [frame.to_data(c) for c in corners]


def heading_vectors(boxes_map: np.ndarray, headings: np.ndarray, frame: LabelFrame) -> np.ndarray:
    """Vectors-layer data (K, 2, 2): an arrow from each box centre to its front, fronted only.

    North is screen-up in both frames of `_coords`, so heading h is world (−cos h, sin h).
    """
    boxes_map = np.asarray(boxes_map, np.float64).reshape(-1, 5)
    h = np.asarray(headings, np.float64).reshape(-1)
    ok = np.isfinite(h)
    if not ok.any():
        return np.zeros((0, 2, 2))
    b, t = boxes_map[ok], np.radians(h[ok])
    pos = frame.to_data(b[:, :2])
    proj = np.stack([-np.cos(t), np.sin(t)], axis=1) * (b[:, 2:3] * 0.5)
    return np.stack([pos, proj], axis=1)


# ------------------------------------------------------------------------------ files


def layers_to_frame(
    pos_data: list,
    pos_features: pd.DataFrame,
    neg_data: list,
    frame: LabelFrame,
    has_front: dict[str, bool],
    neg_features: pd.DataFrame | None = None,
) -> gpd.GeoDataFrame:
    """The contract's label table from the two layers, in the reference scene's CRS."""
    rows: list[dict] = []
    boxes, heads = positive_boxes(list(pos_data), pos_features, frame)
    classes = list(pos_features["class"]) if len(pos_features) else [None] * len(pos_data)
    for box, head, cls in zip(boxes, heads, classes, strict=True):
        front = bool(has_front.get(str(cls), False))
        heading = float(head) if front and np.isfinite(head) else np.nan
        corners = rectangle_corners(box[None], np.array([heading]), frame)[0]
        rows.append(
            {
                "label": "positive",
                "class": str(cls),
                "image": frame.image,
                "heading_deg": heading if np.isfinite(heading) else None,
                "geometry": Polygon(corners),
            }
        )
    for poly in negative_polygons(list(neg_data), neg_features, frame):
        if poly is None or poly.is_empty or poly.area == 0:
            continue
        rows.append(
            {
                "label": "negative",
                "class": None,
                "image": frame.image,
                "heading_deg": None,
                "geometry": poly,
            }
        )
    df = pd.DataFrame(rows, columns=["label", "class", "image", "heading_deg", "geometry"])
    df["heading_deg"] = df["heading_deg"].astype(float)
    return gpd.GeoDataFrame(df, geometry="geometry", crs=frame.crs)


def frame_to_layers(
    gdf: gpd.GeoDataFrame, frame: LabelFrame
) -> tuple[list, pd.DataFrame, list, pd.DataFrame, dict[str, bool]]:
    """Positive shapes + features, negative shapes and the classes' has-front from a label table.

    The table is reprojected to the frame's CRS first.
    """
    gdf = _in_frame_crs(gdf, frame)
    label = gdf["label"].astype(str).str.lower() if "label" in gdf else pd.Series([], dtype=str)
    pos = gdf[label.values == "positive"]
    neg = gdf[label.values == "negative"]
    pos_data, feats, has_front = _positives(pos, frame)
    neg_data, neg_feats = negative_shapes(list(neg.geometry), frame)
    return pos_data, feats, neg_data, neg_feats, has_front


def _in_frame_crs(gdf: gpd.GeoDataFrame, frame: LabelFrame) -> gpd.GeoDataFrame:
    """The table in the frame's CRS, angles and headings turned to its grid north (`north`)."""
    if frame.crs is None or gdf.crs is None or gdf.crs.equals(frame.crs):
        return gdf
    from geodetect.north import reproject_detections

    return reproject_detections(gdf, frame.crs)


def _positives(pos: gpd.GeoDataFrame, frame: LabelFrame) -> tuple[list, pd.DataFrame, dict]:
    if len(pos) == 0:
        return (
            [],
            with_boxes(
                pd.DataFrame({"class": pd.Series([], dtype=object)}), np.zeros((0, 5)), np.zeros(0)
            ),
            {},
        )
    boxes, _ = map_boxes(pos.geometry, frame)
    heads = (
        pd.to_numeric(pos["heading_deg"], errors="coerce").to_numpy(np.float64)
        if "heading_deg" in pos
        else np.full(len(pos), np.nan)
    )
    classes = [str(c) for c in pos["class"]]
    has_front: dict[str, bool] = {}
    for c, h in zip(classes, heads, strict=True):
        has_front[c] = has_front.get(c, False) or bool(np.isfinite(h))
    feats = with_boxes(pd.DataFrame({"class": classes}), boxes, heads)
    return box_shapes(boxes, heads, frame), feats, has_front


def detections_to_layers(gdf: gpd.GeoDataFrame, frame: LabelFrame) -> tuple[list, pd.DataFrame]:
    """Shapes + features (class, score, heading_deg) of a detections table in the frame's CRS."""
    gdf = _in_frame_crs(gdf, frame)
    if len(gdf) == 0:
        empty = pd.DataFrame({"class": pd.Series([], dtype=object), "score": np.zeros(0)})
        return [], with_boxes(empty, np.zeros((0, 5)), np.zeros(0))
    boxes, _ = map_boxes(gdf.geometry, frame)
    heads = pd.to_numeric(gdf.get("heading_deg"), errors="coerce").to_numpy(np.float64)
    feats = pd.DataFrame(
        {"class": [str(c) for c in gdf["class"]], "score": gdf["score"].to_numpy(np.float64)}
    )
    return box_shapes(boxes, heads, frame), with_boxes(feats, boxes, heads)


# ------------------------------------------------------------------------------ drawing


def nosed_shapes(boxes: np.ndarray, heads: np.ndarray, frame: LabelFrame) -> list:
    """Shapes FL, nose, FR, BR, BL (data coords); no nose without a heading."""
    corners = rectangle_corners(boxes, heads, frame)
    shapes = []
    for c, h in zip(corners, heads, strict=True):
        if np.isfinite(h):
            mid = (c[0] + c[1]) / 2
            nose = mid + (mid - c.mean(axis=0)) * 0.35
            c = np.array([c[0], nose, c[1], c[2], c[3]])
        shapes.append(frame.to_data(c))
    return shapes


def drag_box(back_map, front_map, width: float | None, ratio: float) -> tuple[np.ndarray, float]:
    """Map-frame box and heading of a positive dragged from its back to its front."""
    (bx, by), (fx, fy) = np.asarray(back_map, float), np.asarray(front_map, float)
    length = float(math.hypot(fx - bx, fy - by))
    heading = math.degrees(math.atan2(fx - bx, fy - by)) % 360.0
    w = float(width) if width is not None else length * ratio
    box = np.array([(bx + fx) / 2, (by + fy) / 2, max(length, w), min(length, w), 0.0])
    box[4] = (heading if length >= w else heading + 90.0) % 180.0
    return box, heading


def rect4(vertices: np.ndarray, frame: LabelFrame) -> np.ndarray:
    """The shape's own 4 corners when they form a rectangle, else its minimum rotated one."""
    import shapely
    from shapely.geometry import MultiPoint

    if len(vertices) == 4:
        try:
            shape_boxes([vertices], frame)
            return vertices
        except ValueError:
            pass
    rect = shapely.minimum_rotated_rectangle(MultiPoint(vertices[:, ::-1]))
    coords = np.asarray(getattr(rect, "exterior", rect).coords)[:4, ::-1]
    if len(coords) < 4:  # degenerate (a click): a tiny square
        c = vertices.mean(axis=0)
        coords = c + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.5, -0.5]])
    return coords
