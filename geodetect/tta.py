"""Test-time augmentation: rotated and flipped passes, boxes rotated back, fused by rotated IoU.

A pass is (k, flip): flip the columns, then rotate by k × 90° counter-clockwise (torch.rot90
on a square tile). Boxes found in a pass are mapped back to the tile's own pixel frame by the
inverse linear map about the tile centre; angles and headings go through their direction
vectors, so no case-by-case angle arithmetic is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geodetect import geometry

PASSES: tuple[tuple[int, bool], ...] = (
    (0, False),
    (1, False),
    (2, False),
    (3, False),
    (0, True),
    (1, True),
)

_ROT = np.array([[0.0, 1.0], [-1.0, 0.0]])  # offsets (dx, dy) after torch.rot90(k=1) on (x, y-down)
_FLIP = np.array([[-1.0, 0.0], [0.0, 1.0]])


def augment(batch: Any, k: int, flip: bool) -> Any:
    """The NCHW batch (numpy array or torch tensor) as the network sees it in pass (k, flip)."""
    if isinstance(batch, np.ndarray):
        if flip:
            batch = batch[..., ::-1]
        batch = np.rot90(batch, k, axes=(2, 3)) if k % 4 else batch
        return np.ascontiguousarray(batch)
    import torch

    if flip:
        batch = torch.flip(batch, dims=[3])
    return torch.rot90(batch, k, dims=(2, 3)) if k % 4 else batch


def _forward_matrix(k: int, flip: bool) -> np.ndarray:
    m = np.linalg.matrix_power(_ROT, k % 4)
    return m @ _FLIP if flip else m


def _direction_angle(d: np.ndarray, period: float) -> np.ndarray:
    """Angle clockwise from north (pixel frame: north = -y) of direction vectors (N, 2)."""
    return np.degrees(np.arctan2(d[:, 0], -d[:, 1])) % period


def _direction(angle_deg: np.ndarray) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.stack([np.sin(a), -np.cos(a)], axis=1)


def unaugment(
    boxes: np.ndarray, headings: np.ndarray, size: tuple[int, int], k: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 5) and headings (N,) found in pass (k, flip) back in the original tile frame.

    `size` is the (height, width) of the tile as fed to the network (before augmentation).
    """
    inv = np.linalg.inv(_forward_matrix(k, flip))
    h, w = size
    aug_shape = (w, h) if k % 2 else (h, w)
    centre_aug = np.array([aug_shape[1] / 2, aug_shape[0] / 2])
    centre = np.array([w / 2, h / 2])
    out = np.array(boxes, np.float64, copy=True).reshape(-1, 5)
    out[:, :2] = (out[:, :2] - centre_aug) @ inv.T + centre
    out[:, 4] = _direction_angle(_direction(out[:, 4]) @ inv.T, 180.0)
    hd = np.array(headings, np.float64, copy=True).reshape(-1)
    ok = np.isfinite(hd)
    if ok.any():
        hd[ok] = _direction_angle(_direction(hd[ok]) @ inv.T, 360.0)
    return out, hd


def fuse(dets: list[dict], n_passes: int, iou: float, threshold: float) -> dict:
    """Fuse per-pass detections of one tile (decode() dicts plus "pass") into one set.

    Clusters by rotated IoU around the best box; score = mean over passes of each pass's best
    score in the cluster (a box seen by one pass of six is weak); geometry is score-weighted,
    angles averaged as doubled angles, headings as unit vectors.
    """
    boxes = np.concatenate([d["boxes"].reshape(-1, 5) for d in dets])
    scores = np.concatenate([np.asarray(d["scores"], np.float64).reshape(-1) for d in dets])
    classes = np.concatenate([np.asarray(d["classes"], np.int64).reshape(-1) for d in dets])
    heads = np.concatenate([np.asarray(d["headings"], np.float64).reshape(-1) for d in dets])
    passes = np.concatenate([np.full(len(d["scores"]), d["pass"]) for d in dets])
    out: dict[str, list] = {"boxes": [], "scores": [], "classes": [], "headings": []}
    for c in np.unique(classes):
        idx = np.nonzero(classes == c)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        near = geometry.iou_neighbours(boxes[idx], iou)
        free = np.ones(len(idx), bool)
        for a in range(len(idx)):
            if not free[a]:
                continue
            member = np.sort(np.append(near[a][free[near[a]]], a))
            free[member] = False
            sel = idx[member]
            best = np.zeros(n_passes)
            np.maximum.at(best, passes[sel], scores[sel])
            score = float(best.mean())
            if score < threshold:
                continue
            out["boxes"].append(_mean_box(boxes[sel], scores[sel]))
            out["scores"].append(score)
            out["classes"].append(int(c))
            out["headings"].append(_mean_heading(heads[sel], scores[sel]))
    return {
        "boxes": np.array(out["boxes"], np.float64).reshape(-1, 5),
        "scores": np.array(out["scores"], np.float64),
        "classes": np.array(out["classes"], np.int64),
        "headings": np.array(out["headings"], np.float64),
    }


def _mean_box(boxes: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = w.sum()  # zero when --threshold 0 keeps boxes scoring 0: then a plain mean
    w = w / total if total > 0 else np.full(len(w), 1.0 / len(w))
    a2 = np.radians(boxes[:, 4] * 2)
    angle = np.degrees(np.arctan2((w * np.sin(a2)).sum(), (w * np.cos(a2)).sum())) / 2 % 180
    cx, cy = (w[:, None] * boxes[:, :2]).sum(0)
    length = float(np.exp((w * np.log(boxes[:, 2])).sum()))
    width = float(np.exp((w * np.log(boxes[:, 3])).sum()))
    return np.array([cx, cy, length, width, angle])


def _mean_heading(heads: np.ndarray, w: np.ndarray) -> float:
    ok = np.isfinite(heads)
    if not ok.any():
        return float("nan")
    d = _direction(heads[ok]) * w[ok, None]
    return float(_direction_angle(d.sum(0, keepdims=True), 360.0)[0])
