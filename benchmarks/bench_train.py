"""Training benchmark: prints figures, asserts nothing.

Trains on generated scenes with sparse labels (about 40 % of the objects plus negative
regions) with the demo's recipe (`geodetect.demo.FULL`: three 1448² tiles), then prints the
wall time, the validation AP50 per class after every epoch, and AP50 on three test scenes never
seen in training (bench_infer's).

    python benchmarks/bench_train.py [--threads 2] [--size 1448] [--dtype uint16] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_infer import unseen_scenes  # the same unseen test scenes


def main() -> None:
    from geodetect.demo import FULL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=FULL["size"], help="training scenes' side (px)")
    ap.add_argument("--dtype", default="uint8", choices=["uint8", "uint16", "float32"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the run in")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from geodetect.config import load_config
    from geodetect.data import make_training_set
    from geodetect.evaluation import evaluate
    from geodetect.inference import infer
    from geodetect.training import train

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_train_"))
    t0 = time.perf_counter()
    scenes, labels = make_training_set(
        work / "train", seeds=FULL["train_seeds"], size=args.size, cloud=False, dtype=args.dtype
    )
    test_images, test_truth = unseen_scenes(work, "test", gsd=0.25, dtype=args.dtype)
    print(
        f"data: {len(scenes)} training scenes of {args.size}², {len(test_images)} test scenes of "
        f"1024², {args.dtype}, {time.perf_counter() - t0:.1f} s"
    )
    overrides = {f"train.{k}": v for k, v in FULL["train"].items()}
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    config = load_config(None, overrides)
    t0 = time.perf_counter()
    images = [str(d.image) for d in scenes]
    model = train(images, str(labels), None, config, work / "run", device=args.device, seed=0)
    seconds = time.perf_counter() - t0
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    print(
        f"train: {seconds:.0f} s on {args.threads} thread(s), {metrics['train_positives']} "
        f"positives, {metrics['train_negative_patches']} negative patches"
    )
    print("epoch  loss   val AP50 per class")
    for e in metrics["epochs"]:
        aps = "  ".join(f"{k} {_f(v)}" for k, v in e["val_ap50"].items())
        print(f"{e['epoch']:5d}  {e['loss']:.3f}  {aps}   ({e['seconds']:.0f} s)")
    t0 = time.perf_counter()
    det = infer(model, test_images, out=work / "detections.gpkg", device=args.device)
    m = evaluate(det, test_truth, iou=0.5)
    print(f"test scenes (unseen, pooled), infer {time.perf_counter() - t0:.1f} s:")
    for name, c in m["classes"].items():
        print(
            f"  {name:<9} (n={c['n_truth']}) AP50 {_f(c['ap'])}  "
            f"P {_f(c['precision'])}  R {_f(c['recall'])}  "
            f"angle err median {_f(c['angle_error_median'], 1)}°  "
            f"heading ok {_f(c['heading_correct_rate'])}"
        )
    print(f"files in {work}")


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


if __name__ == "__main__":
    main()
