"""tta: every flipped/rotated pass maps its boxes and headings back exactly; fusing passes.

The expected boxes come from the pixels: marker pixels at a box's centre and one step along
its heading are drawn in the original tile, the tile goes through `augment`, and the markers
are found again. `unaugment` must turn what the network would see back into the original.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geodetect import geometry, tta

H, W = 12, 20  # not square: a quarter turn swaps the sides
# (row, col) of the centre pixel and (drow, dcol) one step towards the heading (DESIGN.md:
# pixel direction of angle a is (dx, dy) = (sin a, -cos a)); heading 0 = north = -row
OBJECTS = [
    ((3, 5), (-1, 0), 0.0),
    ((8, 14), (0, 1), 90.0),
    ((6, 9), (1, -1), 225.0),
    ((4, 15), (-2, 1), float(np.degrees(np.arctan2(1, 2)))),  # 26.57°: not a multiple of 45
]
ALL_PASSES = [(k, f) for k in range(4) for f in (False, True)]


def _markers() -> np.ndarray:
    x = np.zeros((1, len(OBJECTS), H, W), np.float32)
    for i, ((r, c), (dr, dc), _) in enumerate(OBJECTS):
        x[0, i, r, c] = 1.0  # centre
        x[0, i, r + dr, c + dc] = 2.0  # towards the heading
    return x


def _seen(aug: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (centre, fixed size, long-axis angle) and headings read off augmented markers."""
    boxes, heads = [], []
    for i in range(len(OBJECTS)):
        (r0,), (c0,) = np.nonzero(aug[0, i] == 1.0)
        (r1,), (c1,) = np.nonzero(aug[0, i] == 2.0)
        h = np.degrees(np.arctan2(c1 - c0, -(r1 - r0))) % 360
        boxes.append([c0 + 0.5, r0 + 0.5, 6.0, 2.5, h % 180])
        heads.append(h)
    return np.array(boxes), np.array(heads)


def _truth() -> tuple[np.ndarray, np.ndarray]:
    boxes = [[c + 0.5, r + 0.5, 6.0, 2.5, h % 180] for (r, c), _, h in OBJECTS]
    return np.array(boxes), np.array([h for *_, h in OBJECTS])


@pytest.mark.parametrize("k,flip", ALL_PASSES)
def test_unaugment_maps_every_pass_back_exactly(k, flip):
    aug = tta.augment(_markers(), k, flip)
    assert aug.shape[2:] == ((W, H) if k % 2 else (H, W))
    boxes, heads = tta.unaugment(*_seen(aug), (H, W), k, flip)
    want_boxes, want_heads = _truth()
    assert boxes[:, :4] == pytest.approx(want_boxes[:, :4], abs=1e-9)
    assert geometry.angle_difference(boxes[:, 4], want_boxes[:, 4], 180.0) == pytest.approx(
        0, abs=1e-9
    )
    assert geometry.angle_difference(heads, want_heads, 360.0) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("k,flip", [(1, False), (0, True), (3, True)])
def test_a_pass_really_moves_the_boxes(k, flip):
    """The identity would fail the round trip: what the network sees differs from the tile."""
    seen, heads = _seen(tta.augment(_markers(), k, flip))
    want_boxes, want_heads = _truth()
    assert not np.allclose(seen[:, :2], want_boxes[:, :2])
    assert not np.allclose(heads, want_heads)


@pytest.mark.parametrize("k,flip", ALL_PASSES)
def test_augment_same_for_numpy_and_torch(k, flip):
    x = np.random.default_rng(k).random((2, 3, H, W)).astype(np.float32)
    from_torch = tta.augment(torch.from_numpy(x), k, flip).numpy()
    assert np.array_equal(tta.augment(x, k, flip), from_torch)


def test_headings_nan_stay_nan():
    boxes = np.array([[5.5, 3.5, 6.0, 2.5, 30.0]])
    _, heads = tta.unaugment(boxes, np.array([np.nan]), (H, W), 1, True)
    assert np.isnan(heads[0])


def _det(boxes, score, cls, heading, p):
    return {
        "boxes": np.array(boxes, np.float64).reshape(-1, 5),
        "scores": np.array([score]),
        "classes": np.array([cls]),
        "headings": np.array([heading]),
        "pass": p,
    }


def test_fuse_averages_angles_across_the_wrap():
    """Long axes at 178° and 2° average to 0°, not 90°; headings at 350° and 10° to 0°."""
    dets = [
        _det([20, 20, 10, 4, 178.0], 0.8, 0, 350.0, 0),
        _det([20, 20, 10, 4, 2.0], 0.8, 0, 10.0, 1),
    ]
    out = tta.fuse(dets, n_passes=2, iou=0.3, threshold=0.1)
    assert len(out["scores"]) == 1
    assert geometry.angle_difference(out["boxes"][0, 4], 0.0, 180.0) == pytest.approx(0, abs=1e-6)
    assert geometry.angle_difference(out["headings"][0], 0.0, 360.0) == pytest.approx(0, abs=1e-6)


def test_fuse_keeps_classes_apart_and_counts_a_pass_once():
    box = [20, 20, 10, 4, 30.0]
    dets = [
        _det(box, 0.9, 0, np.nan, 0),
        _det([20.2, 20, 10, 4, 30.0], 0.5, 0, np.nan, 0),  # same pass again: its best counts
        _det(box, 0.6, 0, np.nan, 1),
        _det(box, 0.7, 1, np.nan, 1),  # another class at the same place
    ]
    out = tta.fuse(dets, n_passes=2, iou=0.3, threshold=0.1)
    assert list(out["classes"]) == [0, 1]
    assert out["scores"] == pytest.approx([(0.9 + 0.6) / 2, 0.7 / 2])
    assert np.isnan(out["headings"]).all()
    # score-weighted centre of the three class-0 boxes
    assert out["boxes"][0, 0] == pytest.approx((0.9 * 20 + 0.5 * 20.2 + 0.6 * 20) / 2.0)


def test_fuse_of_boxes_scoring_zero_gives_their_plain_mean():
    """--threshold 0 keeps peaks scoring 0: their fused box is the plain mean, not NaN."""
    dets = [
        _det([20, 20, 10, 4, 30.0], 0.0, 0, np.nan, 0),
        _det([22, 20, 10, 4, 30.0], 0.0, 0, np.nan, 1),
    ]
    out = tta.fuse(dets, n_passes=2, iou=0.3, threshold=0.0)
    assert len(out["scores"]) == 1 and np.isfinite(out["boxes"]).all()
    assert out["boxes"][0, :2] == pytest.approx([21.0, 20.0])
