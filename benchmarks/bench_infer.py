"""Inference benchmark: prints figures, asserts nothing.

1. AP on three generated test scenes never seen in training (test seeds 1-3, pooled; the
   training tiles are demo.FULL's), also on the same scenes at another GSD (0.35 m vs 0.25 m)
   with a colour cast.
2. Throughput in scene Mpx/s on a 4096² scene at 0.25 m (CPU, or `--device cuda`).
3. Peak RSS of `geodetect infer` (a fresh process) on a 16k × 16k mostly-nodata compressed
   GeoTIFF, written window by window so the benchmark itself never holds it.

    python benchmarks/bench_infer.py [--device cpu|cuda] [--threads 2] [--model run/model.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import Window


def train_model(work: Path, device: str, epochs: int | None) -> Path:
    from geodetect.config import load_config
    from geodetect.data import make_training_set
    from geodetect.demo import FULL
    from geodetect.train import train

    scenes, labels = make_training_set(
        work / "train", seeds=FULL["train_seeds"], size=FULL["size"], cloud=False
    )
    overrides = {f"train.{k}": v for k, v in FULL["train"].items()}
    if epochs:
        overrides["train.epochs"] = epochs
    config = load_config(None, overrides)
    t0 = time.perf_counter()
    model = train(
        images=[str(d.image) for d in scenes],
        labels=str(labels),
        pointclouds=None,
        config=config,
        out_dir=str(work / "run"),
        device=device,
        seed=0,
        resume=False,
        progress=False,
    )
    print(f"trained on {len(scenes)} scenes of {FULL['size']}² in {time.perf_counter() - t0:.0f} s")
    return Path(model)


TEST_SEEDS = (1, 2, 3)  # three unseen 1024² scenes: one alone holds ~20 buildings, a noisy AP


def unseen_scenes(work: Path, tag: str, **kw) -> tuple[list[Path], gpd.GeoDataFrame]:
    """Unseen test scenes (seeds no training tile uses) and their pooled truth."""
    from geodetect.data import make_sample_data

    size = int(round(1024 * 0.25 / kw["gsd"]))  # the same ground footprint at any GSD
    images, truths = [], []
    for seed in TEST_SEEDS:
        name = f"{tag}_{seed}"
        data = make_sample_data(work / name, size=size, seed=seed, cloud=False, name=name, **kw)
        images.append(data.image)
        truths.append(gpd.read_file(data.truth))
    return images, gpd.GeoDataFrame(pd.concat(truths, ignore_index=True), crs=truths[0].crs)


def bench_ap(model: Path, work: Path, device: str) -> None:
    from geodetect.evaluate import evaluate
    from geodetect.infer import infer

    cases = {
        "test 0.25 m": dict(gsd=0.25, colour_cast=None),
        "test 0.35 m + cast": dict(gsd=0.35, colour_cast=(1.25, 1.0, 0.8)),
    }
    for name, kw in cases.items():
        tag = name.replace(" ", "_").replace("+", "").replace(".", "")
        images, truth = unseen_scenes(work, tag, **kw)
        for use_tta in (False, True):
            out = infer(
                model, images, out=work / f"{tag}_{use_tta}.gpkg", device=device, tta=use_tta
            )
            m = evaluate(out, truth, iou=0.5)
            parts = []
            for cls, c in m["classes"].items():
                ap = "-" if c["ap"] is None else f"{c['ap']:.3f}"
                ang = "-" if c["angle_error_median"] is None else f"{c['angle_error_median']:.1f}"
                hd = c["heading_correct_rate"]
                parts.append(
                    f"{cls} (n={c['n_truth']}): AP50 {ap} F1 {c['f1'] or 0:.3f} angle {ang}°"
                    + ("" if hd is None else f" heading ok {hd:.0%}")
                )
            print(f"AP  {name:<20} tta={'on ' if use_tta else 'off'} | " + " | ".join(parts))


def make_big_scene(path: Path, src: Path, size: int) -> None:
    """A size² scene, nodata except a few copies of `src` (deflate, tiled), written by windows."""
    with rasterio.open(src) as s:
        patch = s.read()
        profile = s.profile
    profile.update(
        width=size,
        height=size,
        nodata=0,
        compress="deflate",
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    patch = np.where(patch == 0, 1, patch)  # real content never equals nodata
    ph, pw = patch.shape[1:]
    with rasterio.open(path, "w", **profile) as dst:
        for r, c in [(0, 0), (size // 2, size // 3), (size - ph, size - pw)]:
            dst.write(patch, window=Window(c, r, pw, ph))


def bench_speed(model: Path, work: Path, device: str, side: int) -> None:
    from geodetect.data import make_sample_data
    from geodetect.infer import infer

    data = make_sample_data(work / "speed", size=side, seed=2, cloud=False, name="speed")
    infer(
        model, [data.image], out=work / "warm.gpkg", device=device, tile=256, overlap=32
    )  # warm-up
    t0 = time.perf_counter()
    infer(model, [data.image], out=work / "speed.gpkg", device=device)
    dt = time.perf_counter() - t0
    print(f"speed {side}² scene on {device}: {side * side / 1e6 / dt:.2f} Mpx/s ({dt:.1f} s)")


# `geodetect ...` in a fresh process that prints its own peak RSS (KiB) last. RUSAGE_CHILDREN
# here would report the largest child this benchmark ever waited for, not this one.
_REPORT_OWN_PEAK = (
    "import resource, sys; from geodetect.cli import main; rc = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
)


def bench_rss(model: Path, work: Path, device: str, side: int, threads: int) -> None:
    from geodetect.data import make_sample_data

    patch = make_sample_data(work / "patch", size=1024, seed=3, cloud=False, name="patch")
    big = work / "big.tif"
    make_big_scene(big, patch.image, side)
    out = work / "big.gpkg"
    cmd = [sys.executable, "-c", _REPORT_OWN_PEAK, "infer", str(model), str(big), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    run = subprocess.run(
        [*cmd, "--device", device], check=True, stdout=subprocess.PIPE, text=True, env=env
    )
    dt = time.perf_counter() - t0
    peak_mb = int(run.stdout.strip().splitlines()[-1]) / 1024
    verdict = "OK" if peak_mb < 2048 else "OVER 2 GB"
    print(f"rss   {side}² mostly-nodata scene: peak RSS {peak_mb:.0f} MB ({verdict}), {dt:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="a trained model.pt (default: train one)")
    ap.add_argument("--epochs", type=int, help="training epochs when no --model")
    ap.add_argument("--speed-size", type=int, default=4096)
    ap.add_argument("--rss-size", type=int, default=16384)
    ap.add_argument("--skip", nargs="*", default=[], choices=["ap", "speed", "rss"])
    ap.add_argument("--work", type=Path, help="keep files here (default: a temp folder)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or train_model(work, args.device, args.epochs)
        if "ap" not in args.skip:
            bench_ap(model, work, args.device)
        if "speed" not in args.skip:
            bench_speed(model, work, args.device, args.speed_size)
        if "rss" not in args.skip:
            bench_rss(model, work, args.device, args.rss_size, args.threads)
        print(json.dumps({"model": str(model)}))


if __name__ == "__main__":
    main()
