"""Head outputs -> oriented boxes, in numpy: the one decoder of torch and ONNX Runtime runs.

Pure numpy on purpose: an `.onnx` model then runs end to end without importing torch (4 s of
CPU at process start on the reference machine), and both runtimes share one decoder, so they
give the same detections. Vectorised: per image one threshold pass over the peak map and
gathers at the kept cells, never a Python loop over candidates.
"""

from __future__ import annotations

import numpy as np

from geodetect.targets import STRIDE

REG = ("offset", "size", "angle", "heading")


def decode_arrays(
    out: dict[str, np.ndarray],
    threshold: float,
    has_front: list[bool],
    max_det: int = 500,
    stride: int = STRIDE,
) -> list[dict[str, np.ndarray]]:
    """Peaks of the heatmap -> oriented boxes per image, in the input's pixel frame.

    `out` holds the network's heads as (N, C, H, W) arrays (heatmap logits, offset, log
    size, angle as (cos 2a, sin 2a), heading as (cos h, sin h)). Returns per image
    {"boxes" (M, 5), "scores", "classes", "headings" (NaN without a front)}, by descending
    score. A front class's heading is snapped to the long axis (angle or angle + 180),
    whichever is nearer the predicted heading vector (pooled over the 3x3 cells around the
    peak, weighted by the heatmap), so box and heading always agree.
    """
    logits = np.asarray(out["heatmap"], np.float32)
    heat = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    n, k, h, w = heat.shape
    peaks = np.where(_max3x3(heat) == heat, heat, np.float32(0))
    weight = heat.max(axis=1)  # (N, H, W): the heading vote's weight per cell
    front = np.array(list(has_front) + [False] * (k - len(has_front)), bool)[:k]
    results = []
    for b in range(n):
        flat = peaks[b].reshape(-1)
        idx = np.flatnonzero(flat >= threshold)
        if len(idx) > max_det:
            idx = idx[np.argpartition(-flat[idx], max_det - 1)[:max_det]]
        idx = idx[np.argsort(-flat[idx], kind="stable")]
        scores = flat[idx]
        cls, cell = idx // (h * w), idx % (h * w)
        i, j = cell // w, cell % w
        reg = {name: np.asarray(out[name][b], np.float32).reshape(2, -1)[:, cell] for name in REG}
        cx = (j.astype(np.float32) + reg["offset"][0]) * stride
        cy = (i.astype(np.float32) + reg["offset"][1]) * stride
        size = np.exp(np.clip(reg["size"], -2.0, 8.0))
        angle = np.degrees(np.arctan2(reg["angle"][1], reg["angle"][0]) / 2)
        swap = size[1] > size[0]
        length = np.where(swap, size[1], size[0])
        width = np.where(swap, size[0], size[1])
        angle = np.remainder(angle + swap * np.float32(90.0), np.float32(180.0))
        hx, hy = _pooled_heading(np.asarray(out["heading"][b], np.float32), weight[b], i, j)
        pred_h = np.degrees(np.arctan2(hy, hx))
        flip = np.cos(np.radians(pred_h - angle)) < 0
        heading = np.remainder(angle + flip * np.float32(180.0), np.float32(360.0))
        heading = np.where(front[cls], heading, np.nan)
        results.append(
            {
                "boxes": np.stack([cx, cy, length, width, angle], 1).astype(np.float64),
                "scores": scores.astype(np.float64),
                "classes": cls.astype(np.int64),
                "headings": heading.astype(np.float64),
            }
        )
    return results


def _max3x3(a: np.ndarray) -> np.ndarray:
    """3x3 max filter over the last two axes, edges padded with -inf (torch's max_pool2d)."""
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    rows = np.maximum(np.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])
    return np.maximum(np.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def _pooled_heading(
    heading: np.ndarray, weight: np.ndarray, i: np.ndarray, j: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Heading vectors at cells (i, j), averaged over their 3x3 neighbourhood weighted by the
    heatmap: one cell's front/back vote is noisy, the object's core cells agree more often."""
    h, w = weight.shape
    num = np.zeros((2, len(i)), np.float32)
    den = np.zeros(len(i), np.float32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ii, jj = i + di, j + dj
            ok = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
            ii, jj = np.clip(ii, 0, h - 1), np.clip(jj, 0, w - 1)
            wt = np.where(ok, weight[ii, jj], np.float32(0))
            num += heading[:, ii, jj] * wt
            den += wt
    mean = np.maximum(den / 9, np.float32(1e-6))  # avg_pool2d (zero padding) and its clamp
    return num[0] / 9 / mean, num[1] / 9 / mean
