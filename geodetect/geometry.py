"""Pure oriented-box maths (see DESIGN.md for conventions): conversions, rotated IoU, rotated NMS.

Boxes are float64 arrays (N, 5): [cx, cy, length, width, angle_deg], angle of the long axis
clockwise from grid north in [0, 180). `y_down=True` is the pixel frame, False the map frame.
"""

from __future__ import annotations

import numpy as np
import shapely


def wrap_angle(angle_deg: np.ndarray | float) -> np.ndarray:
    """Orientation of an axis (no front) into [0, 180)."""
    return _wrap(angle_deg, 180.0)


def wrap_heading(heading_deg: np.ndarray | float) -> np.ndarray:
    """Direction (with a front) into [0, 360)."""
    return _wrap(heading_deg, 360.0)


def _wrap(a: np.ndarray | float, period: float) -> np.ndarray:
    # np.mod(-1e-17, 180) rounds to 180.0 itself: fold that back to 0 to keep [0, period)
    out = np.mod(np.asarray(a, np.float64), period)
    return np.where(out >= period, 0.0, out)


def angle_difference(
    a: np.ndarray | float, b: np.ndarray | float, period: float = 180.0
) -> np.ndarray:
    """Smallest absolute difference between angles of the given period (180 axes, 360 headings)."""
    d = np.mod(np.asarray(a, np.float64) - np.asarray(b, np.float64), period)
    return np.minimum(d, period - d)


def direction(angle_deg: np.ndarray | float, y_down: bool = True) -> np.ndarray:
    """Unit vectors (..., 2) pointing along angles clockwise from grid north in the given frame."""
    r = np.deg2rad(np.asarray(angle_deg, np.float64))
    north = -np.cos(r) if y_down else np.cos(r)
    return np.stack([np.sin(r), north], axis=-1)


def vector_angle(v: np.ndarray, y_down: bool = True) -> np.ndarray:
    """Heading in [0, 360) of vectors (..., 2), clockwise from grid north in the given frame."""
    v = np.asarray(v, np.float64)
    north = -v[..., 1] if y_down else v[..., 1]
    return wrap_heading(np.rad2deg(np.arctan2(v[..., 0], north)))


def box_corners(
    boxes: np.ndarray, y_down: bool = True, headings: np.ndarray | None = None
) -> np.ndarray:
    """Corners (N, 4, 2): front-left, front-right, back-right, back-left.

    The rectangle always has its length along the box angle; a heading only picks which edge
    is the front (the one facing closest to it: the angle, +90, +180 or +270), so corners
    round-trip through `boxes_from_corners` even for a front on a long side. NaN = the angle.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    fwd = direction(boxes[:, 4], y_down) * (boxes[:, 2:3] / 2)
    right = direction(boxes[:, 4] + 90.0, y_down) * (boxes[:, 3:4] / 2)
    c = boxes[:, :2]
    corners = np.stack([c + fwd - right, c + fwd + right, c - fwd + right, c - fwd - right], 1)
    if headings is None:
        return corners
    h = np.asarray(headings, np.float64).reshape(-1)
    turns = np.where(np.isfinite(h), np.round(wrap_heading(h - boxes[:, 4]) / 90.0), 0) % 4
    # starting the cycle one corner later turns the front edge 90 degrees clockwise
    idx = (np.arange(4)[None, :] + turns.astype(np.int64)[:, None]) % 4
    return np.take_along_axis(corners, idx[:, :, None], axis=1)


def boxes_from_corners(
    corners: np.ndarray, y_down: bool = True, rtol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 5) and the heading implied by corner order (N,) from (N, 4, 2) rectangle corners.

    The heading points from the back edge (corners 2, 3) to the front edge (corners 0, 1).
    Either winding is accepted. Raises ValueError naming the first index that is not a
    rectangle (sides and right angles checked to `rtol` of the longest side).
    """
    c = np.asarray(corners, np.float64).reshape(-1, 4, 2)
    if len(c) == 0:
        return np.zeros((0, 5)), np.zeros(0)
    bad = np.nonzero(~is_rectangle(c, rtol))[0]
    if len(bad):
        raise ValueError(f"corners {int(bad[0])} are not a 4-corner rectangle")
    sides = np.linalg.norm(np.roll(c, -1, axis=1) - c, axis=2)
    fwd = (c[:, 0] + c[:, 1] - c[:, 2] - c[:, 3]) / 2
    along = np.linalg.norm(fwd, axis=1)
    across = (sides[:, 0] + sides[:, 2]) / 2
    heading = vector_angle(fwd, y_down)
    long_fwd = along >= across
    boxes = np.empty((len(c), 5))
    boxes[:, :2] = c.mean(axis=1)
    boxes[:, 2] = np.where(long_fwd, along, across)
    boxes[:, 3] = np.where(long_fwd, across, along)
    boxes[:, 4] = wrap_angle(np.where(long_fwd, heading, heading + 90.0))
    return boxes, heading


def is_rectangle(corners: np.ndarray, rtol: float = 1e-3) -> np.ndarray:
    """(N,) bool: do (N, 4, 2) corners form a non-degenerate rectangle (either winding)?

    Opposite sides must match and the corner angle be square, to `rtol` of the longest side.
    """
    c = np.asarray(corners, np.float64).reshape(-1, 4, 2)
    edges = np.roll(c, -1, axis=1) - c  # e0 = FR - FL, e1 = BR - FR, ...
    sides = np.linalg.norm(edges, axis=2)
    scale = sides.max(axis=1)
    closing = np.maximum(
        np.linalg.norm(edges[:, 0] + edges[:, 2], axis=1),
        np.linalg.norm(edges[:, 1] + edges[:, 3], axis=1),
    )
    dot = np.abs(np.einsum("ij,ij->i", edges[:, 0], edges[:, 1]))
    ok = np.isfinite(c).all(axis=(1, 2)) & (sides.min(axis=1) > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok &= (closing <= rtol * scale) & (dot <= rtol * sides[:, 0] * sides[:, 1])
    return ok


def box_polygons(boxes: np.ndarray, headings: np.ndarray | None = None) -> np.ndarray:
    """Shapely polygons of boxes in their own frame (corner order FL, FR, BR, BL, y-down)."""
    return shapely.polygons(box_corners(boxes, y_down=True, headings=headings))


def rotated_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IoU matrix (N, M) of oriented boxes (same frame), axis-aligned pre-filter first."""
    a = np.asarray(a, np.float64).reshape(-1, 5)
    b = np.asarray(b, np.float64).reshape(-1, 5)
    out = np.zeros((len(a), len(b)))
    if len(a) == 0 or len(b) == 0:
        return out
    i, j, iou = _pair_ious(box_polygons(a), box_polygons(b))
    out[i, j] = iou
    return out


def _pair_ious(pa: np.ndarray, pb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, iou) for the pairs whose envelopes touch (STRtree), exact polygon overlap."""
    i, j = shapely.STRtree(pb).query(pa)  # (index into pa, index into pb)
    inter = shapely.area(shapely.intersection(pa[i], pb[j]))
    union = shapely.area(pa[i]) + shapely.area(pb[j]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return i, j, iou


def iou_neighbours(boxes: np.ndarray, iou_threshold: float) -> list[np.ndarray]:
    """Per box, the indices of the other boxes whose rotated IoU with it is at least the
    threshold (ascending).

    What `rotated_iou(b, b) >= t` gives row by row, without its N x N matrix: fusing 3
    ensemble members' 6 TTA passes put ~18,000 boxes in one tile, a 2.6 GB matrix.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    i, j = _overlapping_pairs(boxes, iou_threshold, None, inclusive=True)
    src, dst = np.concatenate([i, j]), np.concatenate([j, i])
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    cuts = np.searchsorted(src, np.arange(len(boxes) + 1))
    return [dst[cuts[k] : cuts[k + 1]] for k in range(len(boxes))]


def _overlapping_pairs(
    boxes: np.ndarray, iou_threshold: float, classes: np.ndarray | None, inclusive: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j (same class) whose exact rotated IoU exceeds the threshold (or reaches it:
    `inclusive`).

    Exact polygon intersection is the cost of NMS on a dense scene (thousands of cars parked
    side by side), so pairs are first bounded: the intersection is at most the overlap of the
    two axis-aligned envelopes and the smaller box, hence IoU <= b / (area_i + area_j - b);
    pairs whose bound is at or below the threshold cannot be hits and are never intersected.
    Same result, a fraction of the polygon work (dense 4096² scene: 0.97 -> 0.18 s).
    """
    polys = box_polygons(boxes)
    i, j = shapely.STRtree(polys).query(polys)
    pair = i < j
    if classes is not None:
        cls = np.asarray(classes).reshape(-1)
        pair &= cls[i] == cls[j]
    i, j = i[pair], j[pair]
    env = shapely.bounds(polys)
    ow = np.minimum(env[i, 2], env[j, 2]) - np.maximum(env[i, 0], env[j, 0])
    oh = np.minimum(env[i, 3], env[j, 3]) - np.maximum(env[i, 1], env[j, 1])
    area = shapely.area(polys)
    bound_inter = np.clip(ow, 0, None) * np.clip(oh, 0, None)
    bound_inter = np.minimum(bound_inter, np.minimum(area[i], area[j]))  # thin turned boxes
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = bound_inter / (area[i] + area[j] - bound_inter)
    maybe = bound >= iou_threshold if inclusive else bound > iou_threshold
    i, j = i[maybe], j[maybe]
    inter = shapely.area(shapely.intersection(polys[i], polys[j]))
    union = area[i] + area[j] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    hit = iou >= iou_threshold if inclusive else iou > iou_threshold
    return i[hit], j[hit]


def rotated_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """Indices kept by greedy rotated NMS, highest score first (per class when `classes` given).

    Order is deterministic: descending score, ties by index. A box is suppressed by a kept
    box of the same class whose IoU with it is above `iou_threshold`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    scores = np.asarray(scores, np.float64).reshape(-1)
    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    i, j = _overlapping_pairs(boxes, iou_threshold, classes)
    i, j = np.r_[i, j], np.r_[j, i]  # suppression goes both ways: whichever scores higher
    bounds = np.cumsum(np.bincount(i, minlength=n))[:-1]
    neighbours = np.split(j[np.argsort(i, kind="stable")], bounds)
    suppressed = np.zeros(n, bool)
    keep = []
    for k in order:
        if suppressed[k]:
            continue
        keep.append(k)
        suppressed[neighbours[k]] = True
    return np.asarray(keep, np.int64)


# ------------------------------------------------------------------------------ round objects


def round_boxes(boxes: np.ndarray) -> np.ndarray:
    """Axis-aligned boxes of the ellipses inscribed in (rotated) boxes: [cx, cy, ny, ex, 0].

    A class without orientation (tree crowns, tanks) is labelled with axis-aligned rectangles;
    after a chip is rotated, the right target is the upright box of the rotated *object* (the
    inscribed ellipse), not the rotated rectangle. Angle 0 with length = north-south extent
    and width = east-west extent (length may be < width): the network then regresses the two
    extents and never an angle.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 5)
    a = np.radians(b[:, 4])
    p, q = b[:, 2] / 2, b[:, 3] / 2
    ex = np.hypot(p * np.sin(a), q * np.cos(a))
    ey = np.hypot(p * np.cos(a), q * np.sin(a))
    return np.stack([b[:, 0], b[:, 1], 2 * ey, 2 * ex, np.zeros(len(b))], 1)


def snap_upright(boxes: np.ndarray) -> np.ndarray:
    """Boxes with the angle rounded to 0 or 90 (axis-aligned, length >= width kept)."""
    b = np.array(boxes, np.float64).reshape(-1, 5)
    b[:, 4] = np.mod(np.round(b[:, 4] / 90.0) * 90.0, 180.0)
    return b
