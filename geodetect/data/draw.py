"""Render a layout into an RGB image (reflectance 0-1), supersampled for anti-aliased edges.

Every painted polygon gets an id in one `rasterize` call (later items cover earlier ones);
colours, texture amplitude and shading are then looked up per id, all vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage
from shapely.affinity import translate
from shapely.geometry import LineString

from geodetect.data.scene import Layout, Obj, axes, crown

K_GROUND, K_PAVED, K_PAINT, K_FLAT, K_VEHICLE, K_BUILDING, K_TREE, K_CONFUSER = range(8)
TALL = (K_BUILDING, K_TREE)  # their roofs/crowns stand above any shadow cast nearby

ASPHALT = (0.27, 0.27, 0.28)
LOT = (0.33, 0.33, 0.34)
CONCRETE = (0.56, 0.55, 0.52)
PAINT = (0.86, 0.86, 0.82)
GLASS = (0.06, 0.07, 0.09)
GRASS = np.array([0.25, 0.36, 0.16], np.float32)
SOIL = np.array([0.46, 0.42, 0.31], np.float32)
SHADOW_TINT = np.array([0.42, 0.45, 0.54], np.float32)  # shadows are lit by blue sky only


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    obj_index: np.ndarray  # (H*ss, W*ss) int32 index into layout.objects, -1 where none
    ss: int  # supersampling factor of obj_index


class _Items:
    """Polygons in paint order with their look-up values."""

    def __init__(self) -> None:
        self.geoms: list = []
        self.colour: list = [(0.0, 0.0, 0.0)]  # id 0 = ground
        self.amp: list = [0.0]
        self.kind: list = [K_GROUND]
        self.obj: list = [-1]

    def add(self, geom, colour, amp: float, kind: int, obj: int = -1) -> None:
        if geom is None or geom.is_empty:
            return
        self.geoms.append(geom)
        self.colour.append(tuple(float(c) for c in np.clip(colour, 0.0, 1.0)))
        self.amp.append(amp)
        self.kind.append(kind)
        self.obj.append(obj)


def render(
    layout: Layout,
    width: int,
    height: int,
    gsd: float,
    rng: np.random.Generator,
    ss: int = 2,
    keep_index: bool = True,
) -> Rendered:
    """Paint ground, paving, paint, shadows and objects; blur and add sensor noise.

    Works in horizontal strips of about 4 Mpx (supersampled) so big scenes stay in memory.
    """
    items = _Items()
    _ground_items(items, layout)
    for i, obj in enumerate(layout.objects):
        _object_items(items, obj, i, layout.sun_azimuth, rng)
    shadows = _shadow_shapes(layout)
    item_tree, shadow_tree = shapely.STRtree(items.geoms), shapely.STRtree(shadows)
    medium, coarse = _noise_fields(rng, height, width)
    obj_of_item = np.asarray(items.obj, np.int32)
    img = np.empty((height, width, 3), np.float32)
    obj_index = np.full((height * ss, width * ss), -1, np.int32) if keep_index else None
    step = max(16, 2**20 // width)
    for r0 in range(0, height, step):
        r1 = min(height, r0 + step)
        ids = _burn_strip(items.geoms, item_tree, r0, r1, width, gsd, ss, 0)
        if obj_index is not None:
            obj_index[r0 * ss : r1 * ss] = obj_of_item[ids]
        up = np.ones((ss, ss), np.float32)
        strip = _colour_strip(
            items,
            ids,
            layout,
            rng,
            np.kron(medium[r0:r1], up),
            np.kron(coarse[r0:r1], up),
            (r0 * ss, gsd / ss),
        )
        pad = 4  # rows of halo so the soft shadow edge has no seam between strips
        mask = _burn_strip(shadows, shadow_tree, r0, r1, width, gsd, ss, pad)
        shadow = ndimage.gaussian_filter((mask > 0).astype(np.float32), 1.0)[pad:-pad]
        shadow[np.isin(np.asarray(items.kind, np.int8)[ids], TALL)] = 0.0
        strip *= 1.0 - shadow[..., None] * (1.0 - SHADOW_TINT)
        img[r0:r1] = strip.reshape(r1 - r0, ss, width, ss, 3).mean(axis=(1, 3))
    img = ndimage.gaussian_filter(img, sigma=(0.55, 0.55, 0))
    img += 0.012 * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return Rendered(img, obj_index, ss)


def _burn_strip(geoms, tree, r0: int, r1: int, width: int, gsd: float, ss: int, pad: int):
    """Ids (1-based index into geoms, later ones on top) of a strip of rows r0..r1, plus a
    halo of `pad` supersampled rows above and below."""
    px = gsd / ss
    top = r0 * ss - pad
    shape = ((r1 - r0) * ss + 2 * pad, width * ss)
    found = np.sort(tree.query(shapely.box(0, top * px, width * gsd, (top + shape[0]) * px)))
    if found.size == 0:
        return np.zeros(shape, np.int32)
    return rasterize(
        [(geoms[n], int(n) + 1) for n in found],
        out_shape=shape,
        transform=Affine(px, 0.0, 0.0, 0.0, px, top * px),
        fill=0,
        dtype="int32",
    )


def _colour_strip(items, ids, layout, rng, medium, coarse, origin) -> np.ndarray:
    """Look up colours per id, texture the ground and surfaces, shade tree crowns."""
    fine = ndimage.gaussian_filter(rng.standard_normal(ids.shape, dtype=np.float32), 0.8)
    fine /= 0.35  # a sigma-0.8 blur leaves white noise with std ~0.35
    img = np.asarray(items.colour, np.float32)[ids]
    ground = ids == 0
    mix = 1.0 / (1.0 + np.exp(-(1.6 * coarse[ground] + 0.6 * medium[ground])))
    g = GRASS + (SOIL - GRASS) * mix[:, None]
    img[ground] = g * (1.0 + 0.07 * medium[ground] + 0.06 * fine[ground])[:, None]
    amp = np.asarray(items.amp, np.float32)[ids]
    img *= (1.0 + amp * (0.5 * fine + 0.5 * medium))[..., None]
    kind = np.asarray(items.kind, np.int8)[ids]
    _shade_trees(img, kind == K_TREE, np.asarray(items.obj, np.int32)[ids], layout, origin)
    return img


def _ground_items(items: _Items, layout: Layout) -> None:
    for road in layout.roads:
        items.add(road.polygon, ASPHALT, 0.10, K_PAVED)
    for poly, what in layout.paved:
        items.add(poly, LOT if what == "lot" else CONCRETE, 0.08, K_PAVED)
    for poly, what in layout.flats:
        items.add(poly, (0.2, 0.19, 0.17) if what == "stain" else (0.62, 0.61, 0.58), 0.15, K_FLAT)
    for paint in layout.markings:
        items.add(paint, PAINT, 0.04, K_PAINT)


def _object_items(items: _Items, obj: Obj, i: int, sun_az: float, rng: np.random.Generator) -> None:
    c = np.asarray(obj.colour)
    if obj.kind == "vehicle":
        _vehicle_items(items, obj, i, c)
    elif obj.kind == "tree":
        wobble = ndimage.gaussian_filter1d(rng.normal(0, 0.12, 24), 1.5, mode="wrap")
        items.add(crown(obj.cx, obj.cy, obj.length / 2.0, wobble), c, 0.35, K_TREE, i)
    elif obj.sub in ("gable", "flat", "shed"):
        kind = K_BUILDING if obj.kind == "building" else K_CONFUSER
        _roof_items(items, obj, i, c, sun_az, kind)
    else:
        _box_items(items, obj, i, c)


def _vehicle_items(items: _Items, v: Obj, i: int, c: np.ndarray) -> None:
    """Body, lighter bonnet, dark windshield near the front, roof, small rear window."""
    body = v.footprint.buffer(-0.3, join_style="mitre").buffer(0.3, quad_segs=2)
    items.add(body, c * 0.9, 0.03, K_VEHICLE, i)
    if v.sub == "van":
        parts = [(0.03, 0.18, 0.86, GLASS), (0.18, 0.98, 0.9, c * 1.04)]
    else:
        parts = [
            (0.03, 0.27, 0.86, c * 1.05 + 0.02),
            (0.27, 0.43, 0.84, GLASS),
            (0.43, 0.78, 0.82, c * 0.98),
            (0.78, 0.87, 0.76, np.asarray(GLASS) * 1.8 + c * 0.1),
        ]
    for front, back, wf, col in parts:
        items.add(v.part(front, back, wf), col, 0.03, K_VEHICLE, i)


def _roof_items(items: _Items, b: Obj, i: int, c: np.ndarray, sun_az: float, kind: int) -> None:
    """Gable roofs: two halves lit differently by the sun, a light ridge; flat: parapet + deck."""
    items.add(b.footprint, c * 0.7, 0.05, kind, i)
    inset = Obj(
        b.kind, b.sub, b.cx, b.cy, b.length - 0.4, b.width - 0.4, b.heading, b.height, b.colour
    )
    if b.sub == "flat":
        deck = Obj(
            b.kind, b.sub, b.cx, b.cy, b.length - 1.0, b.width - 1.0, b.heading, b.height, b.colour
        )
        items.add(deck.footprint, c, 0.06, kind, i)
        return
    _, r = axes(b.heading)
    s = np.cos(np.radians(b.heading + 90.0 - sun_az))  # right half faces the sun when > 0
    light = 0.3 * s + (0.07 if s >= 0 else -0.07)
    for side in (-1.0, 1.0):
        off = r * side * inset.width / 4.0
        half = translate(inset.part(0.0, 1.0, 0.5), off[0], off[1])
        items.add(half, c * (0.85 + side * light), 0.07, kind, i)
    f, _ = axes(b.heading)
    ends = [np.array([b.cx, b.cy]) + f * side * (inset.length / 2.0) for side in (-1.0, 1.0)]
    items.add(LineString(ends).buffer(0.12, cap_style="flat"), c * 1.1 + 0.03, 0.03, kind, i)


def _box_items(items: _Items, o: Obj, i: int, c: np.ndarray) -> None:
    """Containers, skips, trailers: symmetric boxes, no windshield."""
    items.add(o.footprint, c * 0.8, 0.04, K_CONFUSER, i)
    if o.sub == "skip":
        items.add(o.part(0.12, 0.88, 0.75), (0.24, 0.21, 0.17), 0.35, K_CONFUSER, i)
    elif o.sub == "container":
        for j in range(5):  # roof panels
            items.add(
                o.part(0.02 + j * 0.192, 0.2 + j * 0.192, 0.92),
                c * (1.0 + 0.04 * (j % 2)),
                0.04,
                K_CONFUSER,
                i,
            )
    else:
        items.add(o.part(0.04, 0.96, 0.9), c, 0.04, K_CONFUSER, i)


def _noise_fields(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance noise at 1 m and 10 m scales, at the output resolution."""
    medium = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), 3.0)
    medium /= medium.std() + 1e-6
    lo = rng.standard_normal((h // 32 + 3, w // 32 + 3)).astype(np.float32)
    coarse = ndimage.zoom(lo, 32, order=3)[:h, :w]
    coarse /= coarse.std() + 1e-6
    return medium, coarse


def _shade_trees(
    img: np.ndarray, mask: np.ndarray, obj_index: np.ndarray, layout: Layout, origin: tuple
) -> None:
    """Round crowns: brighter towards the sun, darker at the rim."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return
    o = obj_index[rows, cols]
    cx = np.array([ob.cx for ob in layout.objects], np.float32)[o]
    cy = np.array([ob.cy for ob in layout.objects], np.float32)[o]
    rad = np.array([ob.length / 2.0 for ob in layout.objects], np.float32)[o]
    row0, px = origin
    dx, dy = ((cols + 0.5) * px - cx) / rad, ((row0 + rows + 0.5) * px - cy) / rad
    sx, sy = axes(layout.sun_azimuth)[0]
    light = 0.9 + 0.3 * (dx * sx + dy * sy) - 0.3 * (dx * dx + dy * dy)
    img[rows, cols] *= np.clip(light, 0.4, 1.3)[:, None]


def _shadow_shapes(layout: Layout) -> list:
    """Cast-shadow polygons: opposite the sun, length = height / tan(elevation)."""
    f, _ = axes(layout.sun_azimuth + 180.0)
    per_m = f / np.tan(np.radians(layout.sun_elevation))
    shapes = []
    for o in layout.objects:
        fp = o.footprint
        if o.kind == "tree":
            # the crown's shadow spans from its lowest to its highest leaves, then the trunk
            lo = per_m * max(0.0, o.height - 0.8 * o.length)
            hi = per_m * (o.height - 0.25 * o.length)
            s = shapely.union(
                shapely.union(translate(fp, *lo), translate(fp, *hi)).convex_hull,
                LineString([(o.cx, o.cy), (o.cx + lo[0], o.cy + lo[1])]).buffer(0.3),
            )
        elif o.sub in ("gable", "shed"):
            fo = np.asarray(axes(o.heading)[0])
            ridge = LineString(
                [np.array([o.cx, o.cy]) + fo * t * o.length / 2.0 for t in (-1.0, 1.0)]
            )
            s = shapely.union_all(
                [fp, translate(fp, *(per_m * o.eave)), translate(ridge, *(per_m * o.height))]
            )
            s = s.convex_hull
        else:
            s = shapely.union(fp, translate(fp, *(per_m * o.height))).convex_hull
        if o.kind != "tree":
            s = s.difference(fp)
        shapes.append(s)
    return shapes
