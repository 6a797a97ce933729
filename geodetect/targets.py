"""Training targets of the network, in numpy: what each output cell should predict.

Torch-free on purpose, so building samples (`samples.py`, `geodetect samples`, the plugin's
samples job) never imports torch. The network (`model.py`) and the decoder (`decoding.py`)
read the same layout: a heatmap per class and REG_CHANNELS regression channels on a grid of
stride STRIDE over inputs whose sides are multiples of MULTIPLE.
"""

from __future__ import annotations

import math

import numpy as np

STRIDE = 4
MULTIPLE = 32  # input sides must be multiples of this (five stride-2 stages)
REG_CHANNELS = 8  # offset (2), log size (2), angle (2), heading (2)


def encode_targets(
    boxes: np.ndarray,
    classes: np.ndarray,
    headings: np.ndarray,
    shape: tuple[int, int],
    n_classes: int,
    stride: int = STRIDE,
) -> dict[str, np.ndarray]:
    """Training targets for one chip from its boxes (chip pixel frame).

    The heatmap has an oriented Gaussian per object (elongated like the object, so long
    vehicles do not smear into their neighbours) peaking at exactly 1 on the centre cell.
    Box terms are regressed densely, at every cell of the object's core weighted by its
    Gaussian (as TTFNet does): many more supervised cells per object than the centre alone,
    which is what lets a few dozen positives train in minutes. Each object's weights sum to
    1, so big buildings do not drown the vehicles' angles. Each cell predicts the offset
    to *its object's* centre, so decoding at the peak cell is unchanged.
    """
    h, w = shape[0] // stride, shape[1] // stride
    heat = np.zeros((n_classes, h, w), np.float32)
    reg = np.zeros((REG_CHANNELS, h, w), np.float32)
    weight = np.zeros((2, h, w), np.float32)  # [box terms, heading terms]
    best = np.zeros((h, w), np.float32)
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for (cx, cy, length, width, angle), c, head in zip(boxes, classes, headings, strict=True):
        gx, gy = cx / stride, cy / stride
        j, i = int(math.floor(gx)), int(math.floor(gy))
        inside = 0 <= j < w and 0 <= i < h
        a = math.radians(angle)
        u, v = math.sin(a), -math.cos(a)  # long axis in the pixel frame
        px, py = (j + 0.5, i + 0.5) if inside else (gx, gy)
        dx, dy = jj + 0.5 - px, ii + 0.5 - py
        along, across = dx * u + dy * v, -dx * v + dy * u
        s_l, s_w = max(0.7, length / stride / 6), max(0.7, width / stride / 6)
        g = np.exp(-0.5 * ((along / s_l) ** 2 + (across / s_w) ** 2)).astype(np.float32)
        if inside:
            g[i, j] = 1.0
        np.maximum(heat[int(c)], g, out=heat[int(c)])
        core = (g >= 0.3) & (g > best)
        if not core.any():
            continue
        best[core] = g[core]
        share = g[core] / g[core].sum()  # every object weighs 1, small or big
        reg[0][core] = gx - jj[core]
        reg[1][core] = gy - ii[core]
        reg[2][core], reg[3][core] = math.log(length), math.log(width)
        reg[4][core], reg[5][core] = math.cos(2 * a), math.sin(2 * a)
        weight[0][core] = share
        if np.isfinite(head):
            hr = math.radians(float(head))
            reg[6][core], reg[7][core] = math.cos(hr), math.sin(hr)
            weight[1][core] = share
        else:
            weight[1][core] = 0.0
    heat[heat < 1e-3] = 0.0
    return {"heatmap": heat, "reg": reg, "reg_weight": weight}
