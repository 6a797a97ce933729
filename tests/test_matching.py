"""matching: greedy rotated-IoU matching by score, AP, COCO AP by size, confusion, errors.

Boxes are (cx, cy, length, width, angle). A box moved by d along its long axis has IoU
(L - d) / (L + d) with the original (overlap (L - d) W over union (L + d) W), so every
expected number below is worked out by hand. test_evaluate.py holds the class_metrics cases.
"""

from __future__ import annotations

import numpy as np
import pytest

from geodetect.matching import (
    HEADING_TOLERANCE_DEG,
    ap_of,
    candidate_ious,
    class_metrics,
    coco_metrics,
    confusion,
    match,
    match_many,
    restrict,
    size_log_ratios,
)

L, W = 4.0, 2.0


def _along(d: float, y: float = 0.0) -> list[float]:
    """A box lying east-west (angle 90) with its centre at x = d."""
    return [d, y, L, W, 90.0]


def _shift_for(iou: float) -> float:
    return L * (1 - iou) / (1 + iou)


def test_greedy_by_score_not_by_iou():
    """The higher score takes the truth even when a lower score overlaps it better."""
    truth = np.array([_along(0)])
    pred = np.array([_along(0), _along(_shift_for(0.7))])  # exact one scores lower
    order, matched, scores = match(pred, np.array([0.5, 0.9]), truth, 0.5)
    assert list(order) == [1, 0]
    assert list(matched) == [0, -1]
    assert list(scores) == [0.9, 0.5]


def test_each_prediction_takes_its_best_free_truth():
    truth = np.array([_along(0), _along(1)])
    # the first overlaps truth 1 best (d = 0.2 vs 0.8); the second also prefers truth 1
    # (d = 0.1) but it is taken, so it falls back to truth 0 (d = 0.9: IoU 0.63)
    pred = np.array([_along(0.8), _along(0.9)])
    _, matched, _ = match(pred, np.array([0.9, 0.8]), truth, 0.5)
    assert list(matched) == [1, 0]
    _, matched, _ = match(pred, np.array([0.9, 0.8]), truth, 0.65)
    assert list(matched) == [1, -1]  # 0.63 is below 0.65


def test_thresholds_of_match_many():
    truth = np.array([_along(0)])
    pred = np.array([_along(_shift_for(0.6))])
    got = [m[1][0] for m in match_many(pred, np.array([1.0]), truth, [0.5, 0.59, 0.61, 0.9])]
    assert got == [0, 0, -1, -1]


def test_rotation_counts_in_the_iou():
    """Same centre and size, diagonal and crossed: identical axis-aligned bounds (IoU 1) but
    an oriented IoU of W² / (2 L W - W²), no match."""
    truth = np.array([[0.0, 0.0, L, W, 45.0]])
    pred = np.array([[0.0, 0.0, L, W, 135.0]])
    ((_, ious),) = candidate_ious(pred, truth)
    assert ious[0] == pytest.approx(W * W / (2 * L * W - W * W))
    assert list(match(pred, np.ones(1), truth, 0.5)[1]) == [-1]


def test_ap_of_known_true_and_false_positives():
    # TP, FP, TP, FP over 3 truths: precisions 1, 1/2, 2/3, 1/2 at recalls 1/3, 1/3, 2/3, 2/3;
    # the envelope gives 1/3 x 1 + 1/3 x 2/3 (the last third of recall is never reached)
    assert ap_of(np.array([0, -1, 1, -1]), 3) == pytest.approx(1 / 3 + 2 / 9)
    assert ap_of(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
    assert ap_of(np.array([-1, -1, 0, 1, 2]), 3) == pytest.approx(3 / 5)
    assert ap_of(np.array([-1]), 0) is None


def test_ap_of_one_size_range_ignores_the_others():
    """COCO area ranges: matches to other-size truths and their-size false positives drop out."""
    matched = np.array([0, -1, 1])  # big truth hit, a false positive, small truth hit
    keep_truth = np.array([False, True])  # score the small truth only
    assert ap_of(matched, 2, keep_truth, np.array([True, False, True])) == pytest.approx(1.0)
    # the false positive is small too: it counts, ahead of the hit
    assert ap_of(matched, 2, keep_truth, np.array([True, True, True])) == pytest.approx(0.5)


def test_coco_ap_is_the_mean_over_ten_thresholds():
    truth = np.array([_along(0)])  # 8 m²: small
    pred = np.array([_along(_shift_for(0.62))])  # matched at 0.5, 0.55, 0.6 only
    matchings = match_many(pred, np.ones(1), truth, [0.5 + 0.05 * i for i in range(10)])
    r = coco_metrics(pred, truth, matchings)
    assert r["ap_50_95"] == pytest.approx(0.3)
    assert r["ap_50_95_by_size"] == {"small": pytest.approx(0.3), "medium": None, "large": None}
    assert r["n_truth_by_size"] == {"small": 1, "medium": 0, "large": 0}


def test_heading_tolerance_and_angle_wrap():
    truth = np.array([_along(0), _along(20)])
    pred = np.array([[0.0, 0.0, L, W, 89.0], [20.0, 0.0, L, W, 91.0]])
    r = class_metrics(
        pred,
        np.array([0.9, 0.8]),
        truth,
        0.5,
        pred_headings=np.array([90.0 + HEADING_TOLERANCE_DEG, 270.0 - HEADING_TOLERANCE_DEG - 1]),
        truth_headings=np.array([90.0, 270.0]),
    )
    assert r["tp"] == 2 and r["angle_error_mean"] == pytest.approx(1.0)
    assert r["heading_correct_rate"] == pytest.approx(0.5)  # 45° is correct, 46° is not
    assert r["heading_error_mean"] == pytest.approx(45.5)
    # long axes at 179° and 1° differ by 2°, not 178°
    wrap = class_metrics(
        np.array([[0.0, 0.0, 8.0, 1.0, 1.0]]), np.ones(1), np.array([[0.0, 0.0, 8.0, 1.0, 179.0]])
    )
    assert wrap["tp"] == 1 and wrap["angle_error_mean"] == pytest.approx(2.0)


def test_confusion_matches_across_classes():
    truth = np.array([_along(0), _along(20), _along(40)])
    truth_classes = np.array(["car", "building", "car"])
    pred = np.array([_along(0), _along(20), _along(80)])
    pred_classes = np.array(["car", "car", "building"])  # right, wrong class, on nothing
    table = confusion(pred, pred_classes, np.array([0.9, 0.8, 0.7]), truth, truth_classes, 0.5)
    assert table["car"] == {"building": 0, "car": 1, "missed": 1}
    assert table["building"] == {"building": 0, "car": 1, "missed": 0}
    assert table["background"] == {"building": 1, "car": 0, "missed": 0}


def test_restrict_reindexes_candidates_into_the_kept_truths():
    truth = np.array([_along(0), _along(20), _along(40)])
    pred = np.array([_along(40.1), _along(0.1)])
    cands = candidate_ious(pred, truth)
    assert [list(c[0]) for c in cands] == [[2], [0]]
    sub = restrict(cands, np.array([0, 1]), np.array([1, 2]), len(truth))
    assert [list(c[0]) for c in sub] == [[1], []]  # truth 2 is column 1; truth 0 is gone
    assert sub[0][1] == pytest.approx(cands[0][1])


def test_size_log_ratios_pair_boxes_by_mutual_centres_not_by_iou():
    truth = np.array([[0, 0, 10, 10, 0], [100, 0, 10, 10, 0], [200, 0, 10, 10, 0]], float)
    pred = np.array(
        [
            [1, 1, 8, 8, 0],  # 8 % of a 10 m crown's side small, a little off centre: a pair
            [104, 0, 5, 5, 0],  # its centre lies in the truth, the truth's not in it: no pair
            [200, 0, 20, 20, 45],  # twice the side, turned: a pair (IoU 0.22 would miss it)
        ]
    )
    got = size_log_ratios(pred, truth)
    assert sorted(got) == pytest.approx(sorted([np.log(10 / 8), np.log(10 / 20)]))
    assert size_log_ratios(pred[:0], truth).shape == (0,)
