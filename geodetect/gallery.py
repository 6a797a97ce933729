"""The `geodetect samples` chips as one mosaic image: what the network will see.

Numpy only: the samples job builds it in its child process, the plugin shows it
(`plugin/_gallery.py`). Chips are taken evenly from the positives and the negatives, so
both show even when one kind has hundreds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

GAP = 4  # pixels between chips


def gallery_from_index(index: str | Path, max_chips: int = 64) -> tuple[np.ndarray, dict]:
    """(mosaic (H, W[, 3]) float32, info): up to `max_chips` chips, half positives (first
    rows), half negatives, each kind spread over its whole list."""
    import pandas as pd

    index = Path(index)
    table = pd.read_csv(index)
    kinds = table["label"].astype(str)
    pos, neg = table[kinds == "positive"], table[kinds == "negative"]
    n_neg = min(len(neg), max(max_chips // 2, max_chips - len(pos)))
    n_pos = min(len(pos), max_chips - n_neg)
    chosen = [*_spread(pos, n_pos)["path"], *_spread(neg, n_neg)["path"]]
    mosaic = _mosaic([_load_chip(index.parent / p) for p in chosen])
    info = {
        "positives": len(pos),
        "negatives": len(neg),
        "shown_positives": n_pos,
        "shown_negatives": n_neg,
        "name": f"samples ({len(pos)} positive, {len(neg)} negative chips)",
    }
    return mosaic, info


def _spread(table, n: int):
    if n <= 0 or len(table) == 0:
        return table.iloc[:0]
    return table.iloc[np.linspace(0, len(table) - 1, n).round().astype(int)]


def _load_chip(path: Path) -> np.ndarray:
    """A chip as HW or HWC float32 in [0, 1] for display (first three channels)."""
    if path.suffix == ".npy":
        a = np.load(path).astype(np.float32)
    else:
        from PIL import Image

        a = np.asarray(Image.open(path), np.float32)
    if a.ndim == 3 and a.shape[0] <= 4 < a.shape[-1]:
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3:
        a = a[..., :3] if a.shape[-1] >= 3 else a[..., 0]
    lo, hi = np.nanpercentile(a, [1, 99]) if a.size else (0.0, 1.0)
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _mosaic(chips: list[np.ndarray]) -> np.ndarray:
    if not chips:
        return np.zeros((8, 8), np.float32)
    rgb = any(c.ndim == 3 for c in chips)
    chips = [np.repeat(c[..., None], 3, -1) if rgb and c.ndim == 2 else c for c in chips]
    h = max(c.shape[0] for c in chips)
    w = max(c.shape[1] for c in chips)
    cols = math.ceil(math.sqrt(len(chips)))
    rows = math.ceil(len(chips) / cols)
    shape = (rows * (h + GAP), cols * (w + GAP)) + ((3,) if rgb else ())
    out = np.zeros(shape, np.float32)
    for k, c in enumerate(chips):
        r, q = divmod(k, cols)
        out[
            r * (h + GAP) : r * (h + GAP) + c.shape[0], q * (w + GAP) : q * (w + GAP) + c.shape[1]
        ] = c
    return out
