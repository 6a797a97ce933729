"""The `geodetect samples` chips as one mosaic image: what the network will see."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

GAP = 4  # pixels between chips


def samples_gallery(images, labels, clouds, out_dir: Path, max_chips: int = 64):
    """(mosaic (H, W[, 3]) float32, image-layer kwargs): positives first, then negatives."""
    import pandas as pd

    from geodetect.config import load_config
    from geodetect.samples import write_samples

    index = Path(
        write_samples(
            images=images,
            labels=labels,
            pointclouds=clouds,
            config=load_config(None),
            out_dir=out_dir,
        )
    )
    table = pd.read_csv(index)
    col = next(c for c in ("path", "file", "chip", "filename") if c in table.columns)
    kind = next((c for c in ("label", "kind", "type") if c in table.columns), None)
    if kind is not None:
        table = table.sort_values(kind, key=lambda s: s.astype(str) != "positive", kind="stable")
    chips = [_load_chip(index.parent / p) for p in table[col].head(max_chips)]
    mosaic = _mosaic(chips)
    n_pos = int((table[kind].astype(str) == "positive").sum()) if kind else len(table)
    name = f"samples ({n_pos} positive, {len(table) - n_pos} negative chips)"
    return mosaic, {"name": name, "rgb": mosaic.ndim == 3}


def _load_chip(path: Path) -> np.ndarray:
    """A chip as HW or HWC float32 in [0, 1] for display (first three channels)."""
    if path.suffix == ".npy":
        a = np.load(path).astype(np.float32)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            a = z[z.files[0]].astype(np.float32)
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
