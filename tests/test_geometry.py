"""Oriented-box maths: conventions, corner round trips, exact rotated IoU, rotated NMS."""

from __future__ import annotations

import numpy as np
import pytest

from geodetect import geometry


def _random_boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    length = rng.uniform(1, 50, n)
    width = length * rng.uniform(0.1, 0.95, n)  # strictly longer than wide: angle is defined
    angle = rng.uniform(0, 180, n)
    edge = [0.0, 1e-9, 179.9999999, 90.0, 45.0, 180.0 - 1e-12]  # the wrap and the axes
    angle[: len(edge)] = edge[:n]
    angle = geometry.wrap_angle(angle)
    xy = rng.uniform(-1e5, 1e5, (n, 2))
    return np.column_stack([xy, length, width, angle])


def test_wrap_angle_and_heading_ranges() -> None:
    a = geometry.wrap_angle(np.array([-1e-17, -90.0, 180.0, 360.0 + 30.0, 179.5]))
    assert np.all((a >= 0) & (a < 180))
    np.testing.assert_allclose(a, [0.0, 90.0, 0.0, 30.0, 179.5])
    h = geometry.wrap_heading(np.array([-1e-17, -90.0, 360.0, 725.0]))
    assert np.all((h >= 0) & (h < 360))
    np.testing.assert_allclose(h, [0.0, 270.0, 0.0, 5.0])
    assert np.isnan(geometry.wrap_heading(np.nan))


def test_angle_difference_wraps() -> None:
    assert geometry.angle_difference(179.0, 1.0) == pytest.approx(2.0)
    assert geometry.angle_difference(0.0, 90.0) == pytest.approx(90.0)
    assert geometry.angle_difference(350.0, 10.0, 360.0) == pytest.approx(20.0)
    assert geometry.angle_difference(10.0, 190.0, 360.0) == pytest.approx(180.0)


@pytest.mark.parametrize("y_down", [True, False])
def test_direction_conventions(y_down: bool) -> None:
    """Angle 0 points to grid north (−row in pixels, +y on the map), 90 to the east."""
    north = geometry.direction(0.0, y_down)
    east = geometry.direction(90.0, y_down)
    np.testing.assert_allclose(north, [0.0, -1.0] if y_down else [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(east, [1.0, 0.0], atol=1e-15)
    assert geometry.vector_angle(np.array([-1.0, 0.0]), y_down) == pytest.approx(270.0)


def test_corner_order_front_left_first() -> None:
    """A vehicle facing east in the pixel frame: front edge at +x, its left corner at −y."""
    box = np.array([[10.0, 20.0, 4.0, 2.0, 90.0]])
    c = geometry.box_corners(box, y_down=True)[0]
    np.testing.assert_allclose(c, [[12, 19], [12, 21], [8, 21], [8, 19]], atol=1e-12)
    m = geometry.box_corners(box, y_down=False)[0]  # map frame: left of east is +y (north)
    np.testing.assert_allclose(m, [[12, 21], [12, 19], [8, 19], [8, 21]], atol=1e-12)


@pytest.mark.parametrize("y_down", [True, False])
def test_box_corner_round_trip(y_down: bool) -> None:
    boxes = _random_boxes(500)
    back, heading = geometry.boxes_from_corners(geometry.box_corners(boxes, y_down), y_down)
    np.testing.assert_allclose(back[:, :4], boxes[:, :4], atol=1e-6)
    assert np.all((back[:, 4] >= 0) & (back[:, 4] < 180))
    assert geometry.angle_difference(back[:, 4], boxes[:, 4]).max() < 1e-6
    assert geometry.angle_difference(heading, boxes[:, 4], 360.0).max() < 1e-6


@pytest.mark.parametrize("y_down", [True, False])
def test_heading_picks_the_front_edge(y_down: bool) -> None:
    boxes = _random_boxes(200, seed=1)
    turn = np.random.default_rng(2).integers(0, 4, len(boxes))
    heads = geometry.wrap_heading(boxes[:, 4] + 90.0 * turn)
    back, implied = geometry.boxes_from_corners(geometry.box_corners(boxes, y_down, heads), y_down)
    np.testing.assert_allclose(back[:, :4], boxes[:, :4], atol=1e-6)
    assert geometry.angle_difference(back[:, 4], boxes[:, 4]).max() < 1e-6
    assert geometry.angle_difference(implied, heads, 360.0).max() < 1e-6
    # a NaN heading means "along the angle"
    nan = geometry.box_corners(boxes, y_down, np.full(len(boxes), np.nan))
    np.testing.assert_array_equal(nan, geometry.box_corners(boxes, y_down))


def test_length_is_the_long_side_whatever_the_corner_order() -> None:
    """Corners whose front edge is the long side: length/width swap, angle turns 90."""
    c = np.array([[[0.0, 0.0], [10.0, 0.0], [10.0, 2.0], [0.0, 2.0]]])  # y down
    box, heading = geometry.boxes_from_corners(c, y_down=True)
    np.testing.assert_allclose(box[0], [5.0, 1.0, 10.0, 2.0, 90.0], atol=1e-12)
    assert heading[0] == pytest.approx(0.0)  # back (y=2) to front (y=0): north


def test_non_rectangle_names_index() -> None:
    good = geometry.box_corners(_random_boxes(3))
    bad = good.copy()
    bad[2, 0] += [5.0, 3.0]
    with pytest.raises(ValueError, match="corners 2 "):
        geometry.boxes_from_corners(bad)
    flat = good.copy()
    flat[1] = flat[1, :1]  # all corners equal: degenerate
    with pytest.raises(ValueError, match="corners 1 "):
        geometry.boxes_from_corners(flat)
    assert geometry.is_rectangle(good).all()
    assert geometry.boxes_from_corners(np.zeros((0, 4, 2)))[0].shape == (0, 5)


def test_rotated_iou_known_values() -> None:
    unit = np.array([[0.0, 0.0, 1.0, 1.0, 0.0]])
    shifted = np.array([[0.5, 0.0, 1.0, 1.0, 0.0]])
    turned = np.array([[0.0, 0.0, 1.0, 1.0, 90.0]])
    far = np.array([[5.0, 5.0, 1.0, 1.0, 0.0]])
    iou = geometry.rotated_iou(unit, np.concatenate([unit, shifted, turned, far]))
    np.testing.assert_allclose(iou, [[1.0, 1.0 / 3.0, 1.0, 0.0]], atol=1e-12)
    # a 2x1 box against itself rotated 90 about the centre: overlap 1, union 3
    r = geometry.rotated_iou(np.array([[0, 0, 2, 1, 0.0]]), np.array([[0, 0, 2, 1, 90.0]]))
    assert r[0, 0] == pytest.approx(1.0 / 3.0)
    # a square rotated 45 inside its own circumscribed square: area 2 of 4... (side sqrt2)
    diamond = np.array([[0.0, 0.0, np.sqrt(2), np.sqrt(2), 45.0]])
    square = np.array([[0.0, 0.0, 2.0, 2.0, 0.0]])
    assert geometry.rotated_iou(diamond, square)[0, 0] == pytest.approx(0.5)
    assert geometry.rotated_iou(np.zeros((0, 5)), square).shape == (0, 1)


def test_rotated_iou_is_symmetric_and_matches_wrap() -> None:
    boxes = _random_boxes(40, seed=3)
    boxes[:, :2] = np.random.default_rng(4).uniform(0, 60, (40, 2))  # crowd them together
    iou = geometry.rotated_iou(boxes, boxes)
    np.testing.assert_allclose(iou, iou.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(iou), 1.0, atol=1e-9)
    assert (iou > 0).sum() > 40  # some real overlaps were measured
    near0 = np.array([[0, 0, 10, 2, 0.0]])
    near180 = np.array([[0, 0, 10, 2, 180.0 - 1e-9]])
    assert geometry.rotated_iou(near0, near180)[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_nms_keeps_best_of_duplicates_and_distinct_ones() -> None:
    boxes = np.array(
        [
            [0.0, 0.0, 10.0, 4.0, 30.0],
            [0.2, 0.1, 10.0, 4.0, 31.0],  # duplicate of 0, better score
            [50.0, 50.0, 10.0, 4.0, 30.0],  # distinct
            [0.0, 0.0, 10.0, 4.0, 120.0],  # crossing 0 at right angles: IoU 0.25
        ]
    )
    scores = np.array([0.8, 0.9, 0.5, 0.7])
    keep = geometry.rotated_nms(boxes, scores, 0.5)
    np.testing.assert_array_equal(keep, [1, 3, 2])
    assert geometry.rotated_nms(boxes, scores, 0.2).tolist() == [1, 2]


def test_nms_per_class_and_ties_deterministic() -> None:
    box = np.array([0.0, 0.0, 10.0, 4.0, 30.0])
    boxes = np.stack([box, box, box, box])
    scores = np.array([0.5, 0.5, 0.5, 0.4])
    assert geometry.rotated_nms(boxes, scores, 0.5).tolist() == [0]  # ties: lowest index
    classes = np.array([0, 1, 1, 2])
    assert geometry.rotated_nms(boxes, scores, 0.5, classes).tolist() == [0, 1, 3]
    assert geometry.rotated_nms(np.zeros((0, 5)), np.zeros(0), 0.5).shape == (0,)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, thr: float, classes: np.ndarray) -> list:
    """Textbook greedy NMS on the full exact IoU matrix: the reference for the fast one."""
    iou = geometry.rotated_iou(boxes, boxes)
    keep: list[int] = []
    for k in np.argsort(-scores, kind="stable"):
        if not any(iou[k, m] > thr and classes[k] == classes[m] for m in keep):
            keep.append(int(k))
    return keep


def test_nms_bounded_pairs_give_the_textbook_result() -> None:
    """The envelope bound that skips polygon work must never skip a real hit: thin boxes
    turned 30-60 deg (whose envelopes overlap more than their areas sum) included."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(2, 120))
        boxes = np.c_[
            rng.uniform(0, 60, (n, 2)),
            rng.uniform(1, 15, n),
            rng.uniform(0.5, 4, n),
            rng.choice([0.0, 90.0, 45.0, float(rng.uniform(0, 180))], n),
        ]
        scores, classes = rng.uniform(0, 1, n), rng.integers(0, 2, n)
        thr = float(rng.choice([0.0, 0.1, 0.3, 0.5]))
        got = geometry.rotated_nms(boxes, scores, thr, classes=classes).tolist()
        assert got == _greedy_nms(boxes, scores, thr, classes)


def test_iou_neighbours_are_the_rows_of_the_iou_matrix():
    """Without the N x N matrix, the same neighbours: random crowded boxes (many overlaps),
    a box twice (IoU 1) and a pair at exactly the threshold (two 2 x 1 boxes sharing half:
    IoU 1/3), both inclusive as `>=` on the matrix."""
    rng = np.random.default_rng(0)
    boxes = np.c_[
        rng.uniform(0, 40, (300, 2)), rng.uniform(2, 12, (300, 2)), rng.uniform(0, 180, 300)
    ]
    boxes = np.vstack([boxes, boxes[:1], [[100, 100, 2, 1, 0], [100, 101, 2, 1, 0]]])
    for t in (0.1, 0.3, 1 / 3, 0.7):
        near = geometry.iou_neighbours(boxes, t)
        full = geometry.rotated_iou(boxes, boxes) >= t - 1e-12
        np.fill_diagonal(full, False)
        assert [n.tolist() for n in near] == [np.flatnonzero(r).tolist() for r in full]
    assert 302 in geometry.iou_neighbours(boxes, 1 / 3 - 1e-9)[301].tolist()
    assert 300 in geometry.iou_neighbours(boxes, 1.0)[0].tolist()
