"""What makes a training checkpoint this run's, and whether `train --resume` may continue it.

A checkpoint carries the run's identity: a hash of the config (all but the epoch count and
the worker count, which do not change the model), the seed, and checksums of the labels,
scenes and point clouds. Resuming another run would either crash (other classes, another
schedule length) or, worse, pass silently; both are refused with one line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from geodetect.config import Config, dump_config
from geodetect.errors import InputError


def run_identity(
    images: list[str],
    labels: str,
    pointclouds: list[str] | None,
    config: Config,
    seed: int,
    init: str | Path | None = None,
) -> dict:
    """What makes a checkpoint this run's: config (but the epoch count and how the work is
    spread over processes), seed, and checksums of the labels, scenes, point clouds and
    `--init` model. Stored in the checkpoint, compared on resume: a side-by-side ensemble
    killed for memory resumes with `train.member_processes: 1`, as its error advises."""
    from geodetect.manifest import canonical_json, file_sha256, scene_checksum

    cfg = dump_config(config)
    cfg["train"] = {
        k: v for k, v in cfg["train"].items() if k not in ("epochs", "workers", "member_processes")
    }
    return {
        "config": hashlib.sha256(canonical_json(cfg).encode()).hexdigest(),
        "seed": int(seed),
        "labels": file_sha256(labels) if Path(labels).is_file() else str(labels),
        "scenes": [scene_checksum(i) for i in images],
        "pointclouds": [scene_checksum(c) for c in pointclouds or []],
        "init": file_sha256(init) if init is not None else None,
    }


_WHAT = {
    "config": "another config",
    "seed": "another --seed",
    "labels": "other labels (the label file changed)",
    "scenes": "other scenes (a file changed, or another list)",
    "pointclouds": "other point clouds",
    "init": "another --init model",
}


def check_resume(ckpt: dict, identity: dict, epochs: int, extend: bool, path: Path) -> None:
    """Refuse a checkpoint of another run, or a schedule it cannot continue."""
    saved = ckpt.get("identity")
    if not isinstance(saved, dict):
        raise InputError(f"{path}: has no run identity (older geodetect); remove it to start over")
    for key, what in _WHAT.items():
        if saved.get(key) != identity[key]:
            raise InputError(
                f"{path}: was made with {what}; resume only the same run, or use a new --out"
            )
    done, planned = int(ckpt["epoch"]), int(saved.get("epochs", epochs))
    if epochs < done:
        raise InputError(f"{path}: {done} epochs are done already, more than --epochs {epochs}")
    if epochs != planned and not extend:
        raise InputError(
            f"{path}: the run was planned for {planned} epochs, not {epochs}; add --extend "
            f"to stretch its schedule to {epochs}, or resume with --epochs {planned}"
        )
