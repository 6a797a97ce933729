"""Truth and sparse labels of a layout, as contract label tables (GeoDataFrames in the scene CRS).

Sparse labels mimic a human labeller: a fraction of each class as positives, plus negative
polygons over object-free areas (confusers, trees, roads) that never hold an unlabelled object.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from geodetect.data.scene import Layout, crown, rect

POSITIVE_KINDS = ("vehicle", "building")


def to_map(geoms: list[BaseGeometry], x0: float, y_top: float) -> np.ndarray:
    """Local frame (x east, y down, metres) -> map coordinates of a north-up grid."""
    return shapely.transform(
        np.asarray(geoms, dtype=object), lambda c: np.column_stack([x0 + c[:, 0], y_top - c[:, 1]])
    )


def positive_rows(layout: Layout, image: str) -> list[dict]:
    """One row per vehicle/building: 4-corner polygon FL, FR, BR, BL (local frame)."""
    rows = []
    for i, o in enumerate(layout.objects):
        if o.kind not in POSITIVE_KINDS:
            continue
        rows.append(
            {
                "label": "positive",
                "class": o.kind,
                "image": image,
                "heading_deg": float(o.heading % 360.0) if o.kind == "vehicle" else np.nan,
                "geometry": Polygon(rect(o.cx, o.cy, o.length, o.width, o.heading)),
                "_obj": i,
            }
        )
    return rows


def choose_labelled(rows: list[dict], fraction: float, rng: np.random.Generator) -> set[int]:
    """About `fraction` of each class (at least one where a class exists and fraction > 0)."""
    chosen: set[int] = set()
    for cls in POSITIVE_KINDS:
        idx = [r["_obj"] for r in rows if r["class"] == cls]
        n = int(round(fraction * len(idx)))
        if fraction > 0 and idx:
            n = max(1, n)
        chosen.update(int(i) for i in rng.choice(idx, size=min(n, len(idx)), replace=False))
    return chosen


def negatives(layout: Layout, labelled: set[int], rng: np.random.Generator) -> list[BaseGeometry]:
    """Negative regions anchored on confusers, trees, roads and open ground, minus every
    unlabelled positive (with a 1 m margin) so they never claim an unlabelled object."""
    w, h = layout.width_m, layout.height_m
    k = w * h / (256.0 * 256.0)
    n = max(4, int(round(rng.uniform(11, 16) * k)))
    anchors = _anchors(layout, rng, n)
    keep_out = [
        shapely.buffer(o.footprint, 1.0, join_style="mitre")
        for i, o in enumerate(layout.objects)
        if o.kind in POSITIVE_KINDS and i not in labelled
    ]
    holes = shapely.union_all(keep_out) if keep_out else Polygon()
    scene = box(0.5, 0.5, w - 0.5, h - 0.5)
    scale = min(1.0, np.sqrt(k)) ** 0.5  # smaller regions in small scenes
    out = []
    for c in anchors:
        shape = _region(c, rng, scale)
        neg = shape.intersection(scene).difference(holes)
        parts = [
            g for g in getattr(neg, "geoms", [neg]) if g.geom_type == "Polygon" and g.area >= 15.0
        ]
        if parts:
            out.append(parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts))
    return out


def _anchors(layout: Layout, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Centres: ~35 % on confusers, 25 % on trees, 25 % on roads, the rest anywhere."""
    conf = [np.array([o.cx, o.cy]) for o in layout.objects if o.kind == "confuser"]
    conf += [np.asarray(g.centroid.coords[0]) for g, _ in layout.flats]
    trees = [np.array([o.cx, o.cy]) for o in layout.objects if o.kind == "tree"]
    road_pts = []
    for _ in range(max(1, n // 4)):
        road = layout.roads[rng.integers(len(layout.roads))] if layout.roads else None
        if road is None:
            break
        inside = road.line.intersection(box(0, 0, layout.width_m, layout.height_m))
        if not inside.is_empty:
            road_pts.append(np.asarray(inside.interpolate(rng.uniform(0, inside.length)).coords[0]))
    out: list[np.ndarray] = []
    for pool, share in ((conf, 0.35), (trees, 0.25)):
        if pool:
            pick = rng.choice(
                len(pool), size=min(len(pool), max(1, int(round(share * n)))), replace=False
            )
            out += [pool[i] for i in pick]
    out += road_pts
    while len(out) < n:
        out.append(rng.uniform([0, 0], [layout.width_m, layout.height_m]))
    return out


def _region(c: np.ndarray, rng: np.random.Generator, scale: float) -> BaseGeometry:
    """A rotated rectangle, an ellipse or an irregular hull, 10-45 m across."""
    a, b = rng.uniform(15, 45) * scale, rng.uniform(10, 30) * scale
    shape = rng.integers(3)
    if shape == 0:
        return Polygon(rect(c[0], c[1], a, b, rng.uniform(0, 180)))
    if shape == 1:
        e = affinity.scale(crown(0.0, 0.0, 1.0), a / 2.0, b / 2.0)
        return affinity.translate(affinity.rotate(e, rng.uniform(0, 180)), c[0], c[1])
    pts = c + rng.normal(0, 1, (9, 2)) * np.array([a, b]) / 3.0
    return shapely.MultiPoint(pts).convex_hull.buffer(1.0)


def frame(rows: list[dict], x0: float, y_top: float, epsg: int) -> gpd.GeoDataFrame:
    """Contract columns only, geometries moved into map coordinates."""
    cols = ["label", "class", "image", "heading_deg"]
    data = {c: [r.get(c) for r in rows] for c in cols}
    data["heading_deg"] = np.array(
        [np.nan if v is None else v for v in data["heading_deg"]], dtype=float
    )
    geoms = to_map([r["geometry"] for r in rows], x0, y_top) if rows else []
    return gpd.GeoDataFrame(data, geometry=list(geoms), crs=f"EPSG:{epsg}")
