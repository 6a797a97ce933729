"""Matching detections to truth and the per-class numbers: AP, precision, recall, F1 and the
angle and heading errors of the matches. Pure numpy/shapely on oriented boxes; the files,
CRSs and error layers are evaluation.py's.

Matching is greedy by descending score with exact rotated-polygon IoU (geometry.rotated_iou):
each prediction takes the best still-unmatched truth of its class (and image) at IoU >= `iou`.
AP is the VOC all-point interpolated area under the precision/recall curve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from geodetect import geometry

HEADING_TOLERANCE_DEG = 45.0
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # COCO's [.5:.95]
# object size bins in m² (CRS units²) for AP by size: a car is ~8 m², a house 100-300 m²
SIZE_BINS = {"small": (0.0, 16.0), "medium": (16.0, 256.0), "large": (256.0, float("inf"))}


def _aabb(boxes: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds (N, 4) of oriented boxes; valid in either frame (uses |sin|, |cos|)."""
    a = np.radians(boxes[:, 4])
    s, c = np.abs(np.sin(a)), np.abs(np.cos(a))
    hx = (boxes[:, 2] * s + boxes[:, 3] * c) / 2
    hy = (boxes[:, 2] * c + boxes[:, 3] * s) / 2
    return np.stack([boxes[:, 0] - hx, boxes[:, 1] - hy, boxes[:, 0] + hx, boxes[:, 1] + hy], 1)


def _group_codes(
    pred_groups: Any, truth_groups: Any, n: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer group ids shared by predictions and truths (one group when none given)."""
    if pred_groups is None or truth_groups is None:
        return np.zeros(n, np.int64), np.zeros(m, np.int64)
    p = np.asarray(pred_groups, dtype=object).astype(str)
    t = np.asarray(truth_groups, dtype=object).astype(str)
    _, codes = np.unique(np.concatenate([p, t]), return_inverse=True)
    return codes[:n], codes[n:]


def _candidate_ious(pred: np.ndarray, truth: np.ndarray, pg: np.ndarray, tg: np.ndarray) -> list:
    """Per prediction: (truth indices, IoUs) of the truths whose bounds touch it in its group.

    An STRtree on axis-aligned bounds keeps this linear-ish in scene size instead of N×M.
    """
    out: list = [(np.empty(0, np.int64), np.empty(0))] * len(pred)
    if len(pred) == 0 or len(truth) == 0:
        return out
    tree = shapely.STRtree(shapely.box(*_aabb(truth).T))
    pi, ti = tree.query(shapely.box(*_aabb(pred).T), predicate="intersects")
    same = pg[pi] == tg[ti]
    pi, ti = pi[same], ti[same]
    sort = np.argsort(pi, kind="stable")
    pi, ti = pi[sort], ti[sort]
    starts = np.searchsorted(pi, np.arange(len(pred) + 1))
    for i in np.unique(pi):
        cand = ti[starts[i] : starts[i + 1]]
        out[i] = (cand, geometry.rotated_iou(pred[i : i + 1], truth[cand])[0])
    return out


def match(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    truth_boxes: np.ndarray,
    iou: float = 0.5,
    pred_groups: Any = None,
    truth_groups: Any = None,
    cands: list | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching; returns (order, match per ordered prediction (-1 = FP), sorted scores)."""
    return match_many(
        pred_boxes, pred_scores, truth_boxes, [iou], pred_groups, truth_groups, cands
    )[0]


def candidate_ious(
    pred_boxes: np.ndarray,
    truth_boxes: np.ndarray,
    pred_groups: Any = None,
    truth_groups: Any = None,
) -> list:
    """Per prediction, (truth indices, IoUs) of the truths it touches in its group: the costly
    part of matching, computed once and handed to `match_many` / `confusion` as `cands`."""
    pred = np.asarray(pred_boxes, np.float64).reshape(-1, 5)
    truth = np.asarray(truth_boxes, np.float64).reshape(-1, 5)
    pg, tg = _group_codes(pred_groups, truth_groups, len(pred), len(truth))
    return _candidate_ious(pred, truth, pg, tg)


def restrict(cands: list, rows: np.ndarray, cols: np.ndarray, n_truth: int) -> list:
    """`cands` of the predictions `rows` against the truths `cols` only, indexed into `cols`."""
    local = np.full(n_truth, -1, np.int64)
    local[cols] = np.arange(len(cols))
    out = []
    for i in rows:
        idx, ious = cands[i]
        j = local[idx]
        keep = j >= 0
        out.append((j[keep], ious[keep]))
    return out


def match_many(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    truth_boxes: np.ndarray,
    ious: Any,
    pred_groups: Any = None,
    truth_groups: Any = None,
    cands: list | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`match` at several IoU thresholds; the rotated IoUs (the costly part) are computed once
    (or given: `cands` from `candidate_ious`)."""
    pred = np.asarray(pred_boxes, np.float64).reshape(-1, 5)
    truth = np.asarray(truth_boxes, np.float64).reshape(-1, 5)
    scores = np.asarray(pred_scores, np.float64).reshape(-1)
    pg, tg = _group_codes(pred_groups, truth_groups, len(pred), len(truth))
    order = np.argsort(-scores, kind="stable")
    if cands is None:
        cands = _candidate_ious(pred, truth, pg, tg)
    out = []
    for iou in ious:
        taken = np.zeros(len(truth), bool)
        matched = np.full(len(pred), -1, np.int64)
        for k, i in enumerate(order):
            idx, cand_ious = cands[i]
            ok = (cand_ious >= iou) & ~taken[idx]
            if ok.any():
                j = idx[ok][np.argmax(cand_ious[ok])]
                taken[j] = True
                matched[k] = j
        out.append((order, matched, scores[order]))
    return out


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated average precision."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _best_cut(
    tp_cum: np.ndarray, n_pred_cum: np.ndarray, n_truth: int, sorted_scores: np.ndarray
) -> int:
    """Number of leading predictions at the best-F1 score threshold (ties kept together)."""
    if len(sorted_scores) == 0 or n_truth == 0:
        return 0
    f1 = 2 * tp_cum / (n_pred_cum + n_truth)
    # only cut where the next score is strictly lower, so "score >= threshold" reproduces the cut
    ends = np.ones(len(sorted_scores), bool)
    ends[:-1] = sorted_scores[1:] < sorted_scores[:-1]
    f1 = np.where(ends, f1, -1.0)
    k = int(np.argmax(f1))
    return k + 1 if f1[k] > 0 else 0


def _stat(values: np.ndarray, fn: Any) -> float | None:
    values = values[np.isfinite(values)]
    return float(fn(values)) if len(values) else None


def class_metrics(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    truth_boxes: np.ndarray,
    iou: float = 0.5,
    pred_headings: np.ndarray | None = None,
    truth_headings: np.ndarray | None = None,
    pred_groups: Any = None,
    truth_groups: Any = None,
) -> dict:
    """Metrics for one class; boxes (N, 5)/(M, 5) in one common frame, groups = image ids.

    Precision/recall/F1, tp/fp/fn and the angle/heading errors are taken at the best-F1 score
    `threshold`; "precisions"/"recalls" are the full PR curve by descending score. Values that
    are undefined (no truth, no match) are None so the dict is JSON-serialisable.
    """
    pred = np.asarray(pred_boxes, np.float64).reshape(-1, 5)
    truth = np.asarray(truth_boxes, np.float64).reshape(-1, 5)
    matching = match(pred, pred_scores, truth, iou, pred_groups, truth_groups)
    return matched_metrics(pred, truth, *matching, pred_headings, truth_headings)


def matched_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    order: np.ndarray,
    matched: np.ndarray,
    sorted_scores: np.ndarray,
    pred_headings: np.ndarray | None,
    truth_headings: np.ndarray | None,
) -> dict:
    """class_metrics from a finished matching (evaluate matches once, then calls this)."""
    n, m = len(pred), len(truth)
    tp_cum = np.cumsum(matched >= 0).astype(np.float64)
    n_cum = np.arange(1, n + 1, dtype=np.float64)
    precisions = tp_cum / n_cum if n else np.empty(0)
    recalls = tp_cum / m if m else np.zeros(n)
    cut = _best_cut(tp_cum, n_cum, m, sorted_scores)
    tp = int(tp_cum[cut - 1]) if cut else 0
    fp, fn = cut - tp, m - tp
    precision = tp / cut if cut else (None if m == 0 else 0.0)
    recall = tp / m if m else None
    f1 = 2 * tp / (cut + m) if (cut + m) else None
    kept = matched[:cut]
    is_tp = kept >= 0
    p_idx, t_idx = order[:cut][is_tp], kept[is_tp]
    angle_err = np.asarray(geometry.angle_difference(pred[p_idx, 4], truth[t_idx, 4], 180.0), float)
    heading_err = np.empty(0)
    if pred_headings is not None and truth_headings is not None and len(p_idx):
        ph = np.asarray(pred_headings, np.float64)[p_idx]
        th = np.asarray(truth_headings, np.float64)[t_idx]
        both = np.isfinite(ph) & np.isfinite(th)
        heading_err = np.asarray(geometry.angle_difference(ph[both], th[both], 360.0), float)
    return {
        "ap": _ap(recalls, precisions) if m else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": float(sorted_scores[cut - 1]) if cut else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_truth": m,
        "n_pred": n,
        "angle_error_mean": _stat(angle_err, np.mean),
        "angle_error_median": _stat(angle_err, np.median),
        "heading_error_mean": _stat(heading_err, np.mean),
        "heading_error_median": _stat(heading_err, np.median),
        "heading_correct_rate": (
            float(np.mean(heading_err <= HEADING_TOLERANCE_DEG)) if len(heading_err) else None
        ),
        "precisions": [float(x) for x in precisions],
        "recalls": [float(x) for x in recalls],
    }


def ap_of(
    matched: np.ndarray,
    n_truth: int,
    keep_truth: np.ndarray | None = None,
    keep_pred: np.ndarray | None = None,
) -> float | None:
    """AP of one matching (the ordered predictions' matches, -1 = FP); None without truth.

    `keep_truth` (per truth) scores only some truths, as COCO's area ranges do: predictions
    matched to the other truths are ignored, and so are unmatched predictions whose
    `keep_pred` (per ordered prediction) is False.
    """
    hit = matched >= 0
    use = np.ones(len(matched), bool)
    if keep_truth is not None:
        own = np.ones(len(matched), bool) if keep_pred is None else keep_pred
        use = np.where(hit, keep_truth[np.maximum(matched, 0)], own)
        n_truth = int(keep_truth.sum())
    if n_truth == 0:
        return None
    tp_cum = np.cumsum(hit[use]).astype(np.float64)
    n_cum = np.arange(1, len(tp_cum) + 1, dtype=np.float64)
    return _ap(tp_cum / n_truth, tp_cum / n_cum if len(tp_cum) else np.empty(0))


def _areas(boxes: np.ndarray) -> np.ndarray:
    return boxes[:, 2] * boxes[:, 3]


def coco_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    matchings: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    size_bins: dict[str, tuple[float, float]] | None = None,
) -> dict:
    """AP@[.5:.95] (the mean over `matchings`, one per IoU in IOU_THRESHOLDS) and the same by
    truth size (COCO's APs/APm/APl, sizes as box area in CRS units², i.e. m²)."""
    bins = SIZE_BINS if size_bins is None else size_bins
    aps = [ap_of(matched, len(truth)) for _, matched, _ in matchings]
    out: dict = {"ap_50_95": float(np.mean(aps)) if len(truth) else None}
    t_area, p_area = _areas(truth), _areas(pred)
    by_size, n_by_size = {}, {}
    for name, (lo, hi) in bins.items():
        keep = (t_area >= lo) & (t_area < hi)
        n_by_size[name] = int(keep.sum())
        vals = [
            ap_of(matched, len(truth), keep, (p_area[order] >= lo) & (p_area[order] < hi))
            for order, matched, _ in matchings
        ]
        by_size[name] = float(np.mean(vals)) if keep.any() else None
    out["ap_50_95_by_size"] = by_size
    out["n_truth_by_size"] = n_by_size
    return out


def confusion(
    pred: np.ndarray,
    pred_classes: np.ndarray,
    scores: np.ndarray,
    truth: np.ndarray,
    truth_classes: np.ndarray,
    iou: float,
    pred_groups: Any = None,
    truth_groups: Any = None,
    cands: list | None = None,
) -> dict[str, dict[str, int]]:
    """Class confusion: {truth class: {predicted class: n}}, matching class-agnostically.

    Row "background" counts predictions on no truth (false positives); column "missed" counts
    truths no prediction matched. Give only the predictions kept at their class's threshold.
    """
    order, matched, _ = match(pred, scores, truth, iou, pred_groups, truth_groups, cands)
    names = sorted(set(map(str, pred_classes)) | set(map(str, truth_classes)))
    table = {t: dict.fromkeys([*names, "missed"], 0) for t in [*names, "background"]}
    seen = np.zeros(len(truth), bool)
    for k, j in zip(order, matched, strict=True):
        row = "background" if j < 0 else str(truth_classes[j])
        table[row][str(pred_classes[k])] += 1
        if j >= 0:
            seen[j] = True
    for j in np.nonzero(~seen)[0]:
        table[str(truth_classes[j])]["missed"] += 1
    return table


def size_log_ratios(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """log(truth side / predicted side), sides as √area, over the mutual-centre pairs.

    A pair is a prediction and a truth box each holding the other's centre: no IoU threshold,
    which would keep only the pairs whose sizes already agree. Training calibrates the size
    head with their mean (`training.size_calibration`): on real crowns the head shrinks big
    crowns towards the mean size, and detections came out ~12 % small.
    """
    pred = np.asarray(pred, np.float64).reshape(-1, 5)
    truth = np.asarray(truth, np.float64).reshape(-1, 5)
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros(0)
    pp, tp = geometry.box_polygons(pred), geometry.box_polygons(truth)
    pi, ti = shapely.STRtree(tp).query(shapely.points(pred[:, :2]), predicate="within")
    both = shapely.contains_xy(pp[pi], truth[ti, 0], truth[ti, 1])
    pi, ti = pi[both], ti[both]
    return 0.5 * np.log(_areas(truth[ti]) / np.maximum(_areas(pred[pi]), 1e-12))
