"""`geodetect pretrain`: a backbone learnt from the unlabelled pixels of the user's own scenes.

Labels are scarce, pixels are not: every scene holds millions of them. Two views of the same
spot (different rotation, zoom, shift, mirror, colour and sensor changes, through
`transforms.transform_chip`) must map to nearby embeddings and away from the other spots of
the batch (SimCLR's contrastive NT-Xent loss). The network learns what stays the same when
light, angle and camera change, the invariances detection needs, from the scenes it will be
used on. No labels, no download. The file is loaded by `train` through `model.pretrained`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geodetect import transforms
from geodetect.atomic import atomic_path, check_not_input, check_out_dir
from geodetect.config import Config, dump_config
from geodetect.device import resolve_device
from geodetect.errors import InputError
from geodetect.model import SmallBackbone
from geodetect.targets import MULTIPLE

PATCHES_PER_SCENE = 256  # random windows read once per scene (2 x chip side each)


class Contrastive(nn.Module):
    """Backbone + projection head on pooled multi-scale features (the head is thrown away)."""

    def __init__(self, cin: int, width: int, depth: int):
        super().__init__()
        self.backbone = SmallBackbone(cin, width, depth)
        c = sum(self.backbone.channels[1:])
        self.project = nn.Sequential(nn.Linear(c, 256), nn.ReLU(inplace=True), nn.Linear(256, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)[1:]
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats], 1)
        return F.normalize(self.project(pooled), dim=1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2N - 1 others."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(-1e4)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def _read_patches(images: list[str], config: Config, seed: int) -> tuple[np.ndarray, list[int]]:
    """Normalised random windows of every scene (mostly valid ones), read once."""
    from rasterio.windows import Window

    from geodetect.project import scene_bands
    from geodetect.raster import SceneReader, open_raster, working_grid

    infos = [open_raster(p) for p in images]
    bands = scene_bands(infos[0], config.data.bands)
    for info in infos[1:]:
        if scene_bands(info, config.data.bands) != bands:
            raise InputError(f"{info.path}: has other bands than {infos[0].path}; set data.bands")
    gsd = float(config.data.gsd or np.median([i.gsd for i in infos]))
    chip = int(math.ceil(config.data.chip_size / MULTIPLE) * MULTIPLE)
    size = 2 * chip
    rng = np.random.default_rng([seed, 23])
    out = []
    for info in infos:
        grid = working_grid(info, gsd)
        stats = transforms.scene_stats(info.path, bands, config, config.data.stats_pixels)
        reader = SceneReader(info.path, grid, bands=bands)
        try:
            for _ in range(PATCHES_PER_SCENE):
                c0 = int(
                    rng.integers(-chip // 2, max(1 - chip // 2, grid.width - size + chip // 2))
                )
                r0 = int(
                    rng.integers(-chip // 2, max(1 - chip // 2, grid.height - size + chip // 2))
                )
                data, valid = reader.read(Window(c0, r0, size, size))
                if valid.mean() < 0.5:
                    continue
                out.append(transforms.normalise(data, valid, stats).astype(np.float16))
        finally:
            reader.close()
    if not out:
        raise InputError("no valid pixels to pretrain on in the given scenes")
    return np.stack(out), bands


def _views(
    patches: np.ndarray, idx: np.ndarray, rng: np.random.Generator, config: Config, chip: int
):
    """Two augmented chips of each chosen patch (the positive pair)."""
    tc = config.train
    cfg = tc.model_copy(
        update={
            "rotate": True,
            "flip": True,
            "scale_jitter": max(0.3, tc.scale_jitter),
            "colour_jitter": max(0.3, tc.colour_jitter),
            "photometric": max(0.3, tc.photometric),
        }
    )
    a, b = [], []
    empty = np.zeros((0, 5))
    for i in idx:
        img = patches[i].astype(np.float32)
        for dst in (a, b):
            p = transforms.draw_params(rng, cfg, max_shift=0.2 * chip)
            x, _, _, _ = transforms.transform_chip(
                img, [], empty, np.zeros(0), p, chip, img.shape[0]
            )
            dst.append(x)
    return torch.as_tensor(np.stack(a)), torch.as_tensor(np.stack(b))


def pretrain(
    images: list[str],
    out: str | Path,
    config: Config | None = None,
    epochs: int | None = None,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Learn a backbone from unlabelled scenes; writes `out` (load it with model.pretrained).

    The backbone's shape (bands, width, depth) follows `config`, which `train` must then use
    too; the file also records the GSD and chip size it saw.
    """
    config = config or Config()
    pc = config.pretrain
    epochs = int(epochs or pc.epochs)
    if epochs < 1:
        raise InputError("--epochs must be at least 1")
    if config.model.backbone != "none":
        raise InputError("pretrain learns the built-in backbone; set model.backbone: none")
    out = check_out_dir(out)
    check_not_input(out, images)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    patches, bands = _read_patches([str(i) for i in images], config, seed)
    chip = int(math.ceil(config.data.chip_size / MULTIPLE) * MULTIPLE)
    width, depth = config.model.capacity
    net = Contrastive(patches.shape[1], width, depth).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=pc.lr, weight_decay=1e-4)
    steps = max(1, pc.chips_per_epoch // pc.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=pc.lr, total_steps=epochs * steps, pct_start=0.1
    )
    from tqdm import tqdm

    bar = tqdm(total=epochs * steps, disable=not progress, desc="pretrain", unit="step")
    history = []
    t0 = time.perf_counter()
    batch = min(pc.batch_size, len(patches))
    for epoch in range(epochs):
        losses = []
        for step in range(steps):
            rng = np.random.default_rng([seed, epoch, step])
            idx = rng.choice(len(patches), batch, replace=False)
            a, b = _views(patches, idx, rng, config, chip)
            loss = nt_xent(net(a.to(dev)), net(b.to(dev)), pc.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
    bar.close()
    from geodetect.weights import backbone_blob

    arch = {
        "in_channels": int(patches.shape[1]),
        "width": width,
        "depth": depth,
        "backbone": "none",
    }
    blob = backbone_blob(
        net.backbone.cpu(),
        arch,
        {
            "bands": [int(b) for b in bands],
            "chip_size": chip,
            "scenes": [Path(str(i)).name for i in images],
            "config": dump_config(config),
            "history": history,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
    with atomic_path(out, suffix=".tmp") as tmp:
        torch.save(blob, tmp)
    return Path(out)
