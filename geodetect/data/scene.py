"""Object layout of a synthetic aerial scene, in a local metric frame.

The local frame is the pixel frame scaled to metres: x east, y *down* (south), origin at the
scene's top-left corner. Headings are clockwise from north (-y), as in DESIGN.md's pixel
frame, so for a north-up raster they are also map headings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

# Counts are "per reference area": a 1024 px scene at 0.25 m (256 m x 256 m).
REF_AREA = 256.0 * 256.0

CAR_COLOURS = np.array(
    [
        (0.86, 0.86, 0.87),
        (0.66, 0.67, 0.69),
        (0.42, 0.43, 0.45),
        (0.09, 0.09, 0.10),
        (0.12, 0.16, 0.32),
        (0.62, 0.10, 0.08),
        (0.20, 0.32, 0.62),
        (0.16, 0.30, 0.18),
        (0.72, 0.64, 0.50),
    ]
)
CAR_WEIGHTS = np.array([0.25, 0.2, 0.15, 0.15, 0.07, 0.08, 0.04, 0.03, 0.03])
ROOF_COLOURS = np.array(
    [
        (0.56, 0.28, 0.21),
        (0.43, 0.23, 0.19),
        (0.34, 0.35, 0.38),
        (0.26, 0.26, 0.28),
        (0.46, 0.36, 0.29),
    ]
)
FLAT_ROOF_COLOURS = np.array([(0.63, 0.63, 0.61), (0.50, 0.48, 0.44), (0.80, 0.80, 0.78)])
CONTAINER_COLOURS = np.array(
    [
        (0.55, 0.22, 0.15),
        (0.16, 0.30, 0.55),
        (0.20, 0.42, 0.25),
        (0.55, 0.56, 0.57),
        (0.75, 0.58, 0.12),
    ]
)


def rect(cx: float, cy: float, length: float, width: float, heading: float) -> np.ndarray:
    """Corners (4, 2) front-left, front-right, back-right, back-left; y down, cw from -y."""
    h = np.radians(heading)
    f = np.array([np.sin(h), -np.cos(h)])
    r = np.array([np.cos(h), np.sin(h)])
    c = np.array([cx, cy])
    hl, hw = length / 2.0, width / 2.0
    return np.array(
        [c + f * hl - r * hw, c + f * hl + r * hw, c - f * hl + r * hw, c - f * hl - r * hw]
    )


def axes(heading: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit forward and right vectors of a heading in the y-down frame."""
    h = np.radians(heading)
    return np.array([np.sin(h), -np.cos(h)]), np.array([np.cos(h), np.sin(h)])


@dataclass
class Obj:
    """One placed object. `heading` faces the front (vehicles) or lies along the long axis."""

    kind: str  # vehicle | building | tree | confuser
    sub: str  # car, van | gable, flat | tree | container, skip, trailer, shed
    cx: float
    cy: float
    length: float
    width: float
    heading: float
    height: float  # top above ground (ridge for gable roofs), metres
    colour: tuple[float, float, float]
    eave: float = 0.0  # wall height of gable roofs

    @property
    def footprint(self) -> Polygon:
        if self.kind == "tree":
            return crown(self.cx, self.cy, self.length / 2.0)
        return Polygon(rect(self.cx, self.cy, self.length, self.width, self.heading))

    def part(self, front: float, back: float, width_frac: float = 1.0) -> Polygon:
        """The strip between fractions `front`..`back` of the length, measured from the front."""
        f, _ = axes(self.heading)
        c = np.array([self.cx, self.cy]) + f * self.length * (0.5 - (front + back) / 2.0)
        return Polygon(
            rect(c[0], c[1], (back - front) * self.length, width_frac * self.width, self.heading)
        )


def crown(cx: float, cy: float, r: float, wobble: np.ndarray | None = None) -> Polygon:
    """A round crown; `wobble` (n,) perturbs the radius for an irregular outline."""
    n = 20 if wobble is None else len(wobble)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (1.0 + (0.0 if wobble is None else wobble))
    return Polygon(np.column_stack([cx + rr * np.cos(t), cy + rr * np.sin(t)]))


class Occupancy:
    """Placed footprints with a bounding-box pre-filter, so new objects never overlap old ones."""

    def __init__(self) -> None:
        self.geoms: list[BaseGeometry] = []
        self._bounds = np.empty((0, 4))

    def free(self, geom: BaseGeometry, margin: float = 0.0) -> bool:
        g = shapely.buffer(geom, margin, join_style="mitre") if margin > 0 else geom
        x0, y0, x1, y1 = g.bounds
        b = self._bounds
        near = (b[:, 0] <= x1) & (b[:, 2] >= x0) & (b[:, 1] <= y1) & (b[:, 3] >= y0)
        if not near.any():
            return True
        cands = np.asarray(self.geoms, dtype=object)[near]
        return not bool(shapely.intersects(cands, g).any())

    def add(self, geom: BaseGeometry) -> None:
        self.geoms.append(geom)
        self._bounds = np.vstack([self._bounds, np.asarray(geom.bounds)[None]])


@dataclass
class Road:
    line: LineString  # centre line, extends past the scene
    width: float
    heading: float  # along the line

    @property
    def polygon(self) -> Polygon:
        return self.line.buffer(self.width / 2.0, cap_style="flat")


@dataclass
class Layout:
    """Everything drawn in a scene, in the local metric frame."""

    width_m: float
    height_m: float
    sun_azimuth: float  # degrees cw from north, towards the sun
    sun_elevation: float  # degrees
    roads: list[Road] = field(default_factory=list)
    paved: list[tuple[Polygon, str]] = field(default_factory=list)  # (polygon, "lot" | "pad")
    markings: list[BaseGeometry] = field(default_factory=list)  # white paint
    flats: list[tuple[Polygon, str]] = field(default_factory=list)  # ("stain" | "slab")
    objects: list[Obj] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[int]:
        return [i for i, o in enumerate(self.objects) if o.kind == kind]


class _Placer:
    """Shared state while laying out a scene: occupancy of objects and of paved ground."""

    def __init__(self, layout: Layout, rng: np.random.Generator) -> None:
        self.layout = layout
        self.rng = rng
        self.objects = Occupancy()
        self.ground = Occupancy()  # roads, lots, pads: no buildings/trees on them
        self.trees = Occupancy()  # shrunken crowns, so neighbouring crowns may touch
        self.inside = box(1.0, 1.0, layout.width_m - 1.0, layout.height_m - 1.0)

    def try_add(self, obj: Obj, margin: float, on_ground: bool) -> bool:
        fp = obj.footprint
        if not self.inside.contains(fp) or not self.objects.free(fp, margin):
            return False
        if on_ground and not self.ground.free(fp, margin):
            return False
        if obj.kind != "tree" and not self.trees.free(fp, 0.3):
            return False
        self.layout.objects.append(obj)
        if obj.kind == "tree":
            self.trees.add(crown(obj.cx, obj.cy, 0.55 * obj.length / 2.0))
        else:
            self.objects.add(fp)
        return True

    def random_point(self) -> np.ndarray:
        return self.rng.uniform([0.0, 0.0], [self.layout.width_m, self.layout.height_m])


def make_layout(
    width_m: float, height_m: float, rng: np.random.Generator, traffic: float = 1.0
) -> Layout:
    """Lay out roads, a parking lot, vehicles, buildings, trees and confusers without overlaps.

    `traffic` multiplies the vehicles per area (a busy suburb: 4-5); above 1 a scene also gets
    one more parking lot per ~100 vehicles. At 1 the draws (and so a seed's scene) are as ever.
    """
    layout = Layout(width_m, height_m, float(rng.uniform(110, 250)), float(rng.uniform(35, 60)))
    p = _Placer(layout, rng)
    k = width_m * height_m / REF_AREA
    _roads(p)
    n_vehicles = max(4, int(round(rng.uniform(50, 70) * k * traffic)))
    n_lot = _parking_lot(p) if min(width_m, height_m) >= 60 else 0
    if traffic > 1.0 and n_lot:
        n_lot += sum(_parking_lot(p) for _ in range(n_vehicles // 100))
    n_road = _road_vehicles(p, max(2, int(round(0.45 * (n_vehicles - n_lot)))))
    _buildings(p, max(2, int(round(rng.uniform(16, 24) * k))))
    _scattered_vehicles(p, max(1, n_vehicles - n_lot - n_road))
    _confusers(p, k)
    _trees(p, k)
    _flats(p, k)
    return layout


def _roads(p: _Placer) -> None:
    lay, rng = p.layout, p.rng
    short = min(lay.width_m, lay.height_m)
    n = 1 + int(short >= 150) + int(short >= 400)
    a0 = rng.uniform(0, 180)
    span = 2.0 * (lay.width_m + lay.height_m)
    scene = box(0, 0, lay.width_m, lay.height_m)
    for i in range(n):
        a = (a0 + (90.0 * i if i < 2 else rng.uniform(30, 60)) + rng.normal(0, 8)) % 180
        c = rng.uniform(
            [0.25 * lay.width_m, 0.25 * lay.height_m], [0.75 * lay.width_m, 0.75 * lay.height_m]
        )
        f, _ = axes(a)
        road = Road(
            LineString([c - f * span, c + f * span]), float(rng.uniform(6.5, 8.0)), float(a)
        )
        lay.roads.append(road)
        p.ground.add(road.polygon)
    # paint: dashed centre line and solid edge lines, not across other roads
    for i, road in enumerate(lay.roads):
        others = shapely.union_all([r.polygon for j, r in enumerate(lay.roads) if j != i])
        dashes = [
            LineString([road.line.interpolate(t), road.line.interpolate(t + 3.0)])
            for t in np.arange(0.0, road.line.length - 3.0, 9.0)
        ]
        lines = [shapely.MultiLineString(dashes)]
        for side in (-1, 1):
            lines.append(road.line.offset_curve(side * (road.width / 2.0 - 0.35)))
        paint = shapely.union_all([shapely.buffer(g, 0.08, cap_style="flat") for g in lines])
        paint = paint.intersection(scene).difference(others)
        if not paint.is_empty:
            lay.markings.append(paint)


def _parking_lot(p: _Placer) -> int:
    """A lot beside a road with two facing rows of stalls, mostly occupied. Returns cars placed."""
    lay, rng = p.layout, p.rng
    stall_w, stall_d, aisle = 2.6, 5.0, 6.5
    depth = 2 * stall_d + aisle
    for _ in range(40):
        road = lay.roads[rng.integers(len(lay.roads))]
        n = int(rng.integers(8, 15))
        length = n * stall_w + 1.0
        t = rng.uniform(0, road.line.length)
        c0 = np.asarray(road.line.interpolate(t).coords[0])
        f, r = axes(road.heading)
        side = rng.choice([-1.0, 1.0])
        gap = 1.5
        c = c0 + side * r * (road.width / 2.0 + gap + depth / 2.0)
        lot = Polygon(rect(c[0], c[1], length, depth, road.heading))
        if (
            not p.inside.contains(lot)
            or not p.ground.free(lot, 0.5)
            or not p.objects.free(lot, 0.5)
        ):
            continue
        conn_c = c0 + side * r * (road.width / 2.0 + gap / 2.0)
        conn = Polygon(rect(conn_c[0], conn_c[1], 6.0, gap + 0.4, road.heading))
        lay.paved += [(lot, "lot"), (conn, "lot")]
        p.ground.add(lot)
        placed = 0
        for q in (-1.0, 1.0):
            row = c + q * r * (aisle / 2.0 + stall_d / 2.0)
            for i in range(n + 1):  # stall separators
                x = row + f * (i - n / 2.0) * stall_w
                a, b = x - r * stall_d / 2.0 * 0.95, x + r * stall_d / 2.0 * 0.95
                lay.markings.append(LineString([a, b]).buffer(0.07, cap_style="flat"))
            for i in range(n):
                if rng.random() > 0.75:
                    continue
                s = row + f * (i - (n - 1) / 2.0) * stall_w
                s = s + f * rng.normal(0, 0.12) + r * rng.normal(0, 0.2)
                nose_in = rng.random() < 0.7
                heading = road.heading + (90.0 if q > 0 else -90.0) + (0.0 if nose_in else 180.0)
                v = _vehicle(rng, s[0], s[1], heading + rng.normal(0, 2.5), van_p=0.1)
                placed += p.try_add(v, 0.15, on_ground=False)
        return placed
    return 0


def _vehicle(
    rng: np.random.Generator, cx: float, cy: float, heading: float, van_p: float = 0.15
) -> Obj:
    colour = CAR_COLOURS[rng.choice(len(CAR_COLOURS), p=CAR_WEIGHTS)] * rng.uniform(0.92, 1.06)
    colour = tuple(np.clip(colour, 0.0, 1.0))
    if rng.random() < van_p:
        length, width, sub, height = rng.normal(5.5, 0.25), rng.normal(2.1, 0.05), "van", 2.1
    else:
        length, width, sub, height = rng.normal(4.5, 0.2), rng.normal(1.8, 0.06), "car", 1.5
    length, width = float(np.clip(length, 3.9, 6.2)), float(np.clip(width, 1.65, 2.25))
    return Obj(
        "vehicle", sub, float(cx), float(cy), length, width, float(heading % 360.0), height, colour
    )


def _road_vehicles(p: _Placer, n: int) -> int:
    """Cars driving in the right-hand lane, or parked at the kerb, facing along the road."""
    lay, rng = p.layout, p.rng
    placed = 0
    for _ in range(n * 30):
        if placed >= n:
            break
        road = lay.roads[rng.integers(len(lay.roads))]
        c0 = np.asarray(road.line.interpolate(rng.uniform(0, road.line.length)).coords[0])
        _, r = axes(road.heading)
        side = rng.choice([-1.0, 1.0])
        off = road.width / 4.0 if rng.random() < 0.7 else road.width / 2.0 - 1.2
        c = c0 + side * r * (off + rng.normal(0, 0.15))
        heading = road.heading + (0.0 if side > 0 else 180.0) + rng.normal(0, 2.0)
        placed += p.try_add(_vehicle(rng, c[0], c[1], heading), 1.0, on_ground=False)
    return placed


def _scattered_vehicles(p: _Placer, n: int) -> None:
    """Vehicles at any angle on driveways or grass."""
    rng = p.rng
    placed = 0
    for _ in range(n * 40):
        if placed >= n:
            break
        c = p.random_point()
        v = _vehicle(rng, c[0], c[1], rng.uniform(0, 360))
        pad = Polygon(rect(v.cx, v.cy, v.length + 2.0, v.width + 1.6, v.heading + rng.normal(0, 3)))
        if not p.ground.free(pad, 0.3) or not p.objects.free(pad, 0.5):
            continue
        if p.try_add(v, 0.5, on_ground=True):
            placed += 1
            if rng.random() < 0.6:
                p.layout.paved.append((pad, "pad"))
                p.ground.add(pad)


def _buildings(p: _Placer, n: int) -> None:
    lay, rng = p.layout, p.rng
    placed = 0
    for _ in range(n * 60):
        if placed >= n:
            break
        c = p.random_point()
        length = rng.uniform(8, 25)
        width = max(6.0, length / rng.uniform(1.0, 2.5))
        length, width = max(length, width), min(length, width)
        if rng.random() < 0.5:  # houses tend to line up with the nearest road
            road = min(lay.roads, key=lambda rd: rd.line.distance(Point(c)))
            angle = road.heading + rng.choice([0.0, 90.0]) + rng.normal(0, 3)
        else:
            angle = rng.uniform(0, 180)
        angle %= 180.0
        if rng.random() < 0.8:
            eave = rng.uniform(3.0, 7.0)
            height = min(12.0, eave + 0.29 * width)
            sub, colour = "gable", ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))]
        else:
            eave = height = rng.uniform(4.0, 10.0)
            sub, colour = "flat", FLAT_ROOF_COLOURS[rng.integers(len(FLAT_ROOF_COLOURS))]
        colour = tuple(np.clip(colour * rng.uniform(0.9, 1.1), 0, 1))
        b = Obj("building", sub, c[0], c[1], length, width, angle, max(4.0, height), colour, eave)
        placed += p.try_add(b, 2.5, on_ground=True)


def _confusers(p: _Placer, k: float) -> None:
    """Vehicle-sized boxes without windshields, and small sheds that are not buildings."""
    lay, rng = p.layout, p.rng
    kinds = {  # sub: (length, width, height)
        "container": (6.06, 2.44, 2.6),
        "skip": (3.7, 1.85, 1.5),
        "trailer": (4.2, 2.0, 1.8),
    }
    n_box = max(2, int(round(rng.uniform(11, 17) * k)))
    n_shed = max(1, int(round(rng.uniform(4, 8) * k)))
    todo = [str(s) for s in rng.choice(list(kinds), n_box)] + ["shed"] * n_shed
    for sub in todo:
        for _ in range(60):
            kerb = sub != "shed" and rng.random() < 0.35
            if kerb:  # parked at the roadside, like the cars
                road = lay.roads[rng.integers(len(lay.roads))]
                c0 = np.asarray(road.line.interpolate(rng.uniform(0, road.line.length)).coords[0])
                _, r = axes(road.heading)
                c = c0 + rng.choice([-1.0, 1.0]) * r * (road.width / 2.0 - 1.3)
                heading = road.heading + rng.choice([0.0, 180.0]) + rng.normal(0, 2)
            else:
                c, heading = p.random_point(), rng.uniform(0, 360)
            if sub == "shed":
                length = rng.uniform(2.5, 4.5)
                width = rng.uniform(2.0, length)
                height, colour = 2.5, ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))]
                obj = Obj(
                    "confuser",
                    "shed",
                    c[0],
                    c[1],
                    length,
                    width,
                    heading % 180,
                    height,
                    tuple(colour * rng.uniform(0.85, 1.1)),
                    eave=2.0,
                )
            else:
                length, width, height = kinds[sub]
                colour = CONTAINER_COLOURS[rng.integers(len(CONTAINER_COLOURS))] * rng.uniform(
                    0.85, 1.1
                )
                if sub == "trailer":
                    colour = CAR_COLOURS[rng.integers(3)] * rng.uniform(0.9, 1.05)
                obj = Obj(
                    "confuser",
                    sub,
                    c[0],
                    c[1],
                    length,
                    width,
                    heading % 360,
                    height,
                    tuple(np.clip(colour, 0, 1)),
                )
            if p.try_add(obj, 0.8, on_ground=not kerb):
                break


def _trees(p: _Placer, k: float) -> None:
    """Clusters of round crowns 3-8 m across, plus a few solitary trees."""
    rng = p.rng
    n_clusters = max(1, int(round(rng.uniform(8, 12) * k)))
    for _ in range(n_clusters):
        centre = p.random_point()
        for _ in range(int(rng.integers(4, 14))):
            c = centre + rng.normal(0, 8.0, 2)
            _add_tree(p, c)
    for _ in range(max(1, int(round(12 * k)))):
        _add_tree(p, p.random_point())


def _add_tree(p: _Placer, c: np.ndarray) -> None:
    rng = p.rng
    r = rng.uniform(1.5, 4.0) ** 0.6 * 4.0**0.4  # crowns 3-8 m, more large ones
    height = float(np.clip(2.2 * r + 2.0 + rng.normal(0, 1.5), 4.0, 15.0))
    colour = tuple(np.array([0.2, 0.32, 0.13]) * rng.uniform(0.8, 1.2, 3))
    tree = Obj("tree", "tree", float(c[0]), float(c[1]), 2 * r, 2 * r, 0.0, height, colour)
    if p.trees.free(crown(c[0], c[1], 0.55 * r)):
        p.try_add(tree, 0.4, on_ground=True)


def _flats(p: _Placer, k: float) -> None:
    """Flat confusers: dark stains (oil, wet soil) and vehicle-sized concrete slabs."""
    lay, rng = p.layout, p.rng
    for _ in range(max(2, int(round(rng.uniform(8, 12) * k)))):
        c = p.random_point()
        pts = c + rng.normal(0, rng.uniform(0.6, 2.0), (7, 2))
        blob = shapely.MultiPoint(pts).convex_hull.buffer(rng.uniform(0.3, 1.0))
        lay.flats.append((blob, "stain"))
    for _ in range(max(1, int(round(rng.uniform(3, 6) * k)))):
        for _ in range(30):
            c = p.random_point()
            slab = Polygon(
                rect(c[0], c[1], rng.uniform(3.8, 5.0), rng.uniform(1.7, 2.2), rng.uniform(0, 180))
            )
            if p.inside.contains(slab) and p.objects.free(slab, 0.5) and p.trees.free(slab, 0.5):
                lay.flats.append((slab, "slab"))
                p.objects.add(slab)
                break
