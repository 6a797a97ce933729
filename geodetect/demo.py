"""`geodetect demo` (what `make demo` runs): the main job end to end on generated data.

Makes training tiles and a *different* test scene (other seeds), trains on the tiles' sparse
labels, detects over the test scene, evaluates against its full truth, and prints the metrics
and where every file is. Defaults finish in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# The recipe (also used by benchmarks/bench_train.py and bench_infer.py): training tiles
# (seeds, side in px at 0.25 m), test scene side, and the training overrides. Three 1448²
# tiles rather than one 2048² scene (the same training time: it is set by the chips drawn):
# each generated scene has its own light, sun and palette, and a model trained on one scene
# learns that scene. QUICK is for tests: plumbing only, not quality.
FULL = {
    "train_seeds": (0, 7, 8),
    "size": 1448,
    "test_size": 1024,
    "train": {"epochs": 60, "chips_per_epoch": 768, "batch_size": 16},  # the config defaults
}
QUICK = {
    "train_seeds": (0,),
    "size": 256,
    "test_size": 192,
    "label_fraction": 1.0,  # a 256² scene holds two buildings: label both
    "train": {"epochs": 1, "chips_per_epoch": 16, "batch_size": 8},
    "model": {"width": 8},
}


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(out_dir: str | Path = "demo_out", progress: bool = False, quick: bool = False) -> dict:
    """Generate, train, detect, evaluate; returns {"metrics", "files", "seconds"}."""
    from geodetect.config import load_config
    from geodetect.data import make_sample_data, make_training_set
    from geodetect.evaluation import evaluate
    from geodetect.inference import infer
    from geodetect.training import train

    p = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _say(f"1/4 generating training scenes and a different test scene in {out}/")
    train_scenes, train_labels = make_training_set(
        out / "train",
        seeds=p["train_seeds"],
        size=p["size"],
        cloud=False,
        label_fraction=p.get("label_fraction", 0.4),
    )
    test_data = make_sample_data(
        out / "test", size=p["test_size"], seed=1000, cloud=False, name="test"
    )
    names = ", ".join(d.image.name for d in train_scenes)
    _say(f"2/4 training on {names} (sparse labels {train_labels.name})")
    overrides = {
        f"{section}.{k}": v for section in ("train", "model") for k, v in p.get(section, {}).items()
    }
    config = load_config(None, overrides)
    model = Path(
        train(
            images=[str(d.image) for d in train_scenes],
            labels=str(train_labels),
            pointclouds=None,
            config=config,
            out_dir=str(out / "run"),
            device="auto",
            seed=0,
            resume=False,
            progress=progress,
        )
    )
    _say(f"3/4 detecting objects in {test_data.image.name}")
    detections = infer(model, [test_data.image], out=out / "detections.gpkg", progress=progress)
    _say("4/4 evaluating against the test scene's truth")
    errors = out / "errors.gpkg"
    metrics = evaluate(detections, test_data.truth, iou=0.5, errors=errors)
    files = {
        "train_images": [str(d.image) for d in train_scenes],
        "train_labels": str(train_labels),
        "test_image": str(test_data.image),
        "test_truth": str(test_data.truth),
        "model": str(model),
        "detections": str(detections),
        "errors": str(errors),
        "metrics": str(out / "metrics.json"),
    }
    result = {"metrics": metrics, "files": files, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(summary(result))
    return result


def _fmt(x: Any, pattern: str = "{:.3f}") -> str:
    return "-" if x is None else pattern.format(x)


def summary(result: dict) -> str:
    """A short human-readable table of the demo's metrics and files."""
    m = result["metrics"]
    lines = [
        "",
        f"AP@{m['iou']:.2f} on the unseen test scene (mean {_fmt(m['mean_ap'])}):",
        f"  {'class':<10} {'AP':>6} {'P':>6} {'R':>6} {'F1':>6} "
        f"{'angle err':>10} {'heading ok':>10}",
    ]
    for name, c in m["classes"].items():
        lines.append(
            f"  {name:<10} {_fmt(c['ap']):>6} {_fmt(c['precision']):>6} {_fmt(c['recall']):>6} "
            f"{_fmt(c['f1']):>6} {_fmt(c['angle_error_median'], '{:.1f}°'):>10} "
            f"{_fmt(c['heading_correct_rate'], '{:.0%}'):>10}"
        )
    lines.append("files:")
    for k, v in result["files"].items():
        lines += [f"  {k:<13} {p}" for p in ([v] if isinstance(v, str) else v)]
    lines.append(f"done in {result['seconds']:.0f} s")
    return "\n".join(lines)
