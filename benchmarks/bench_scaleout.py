"""Scale-out benchmark: prints figures, asserts nothing.

Throughput of `geodetect infer` over 8 generated scenes in-process, then on a local Dask
cluster with 1 and 2 worker processes (1 thread each). Figures: wall time including the
cluster start, and scene Mpx/s. On a shared 2-core machine the 2-worker speed-up is bounded
by the cores actually free.

    python benchmarks/bench_scaleout.py [--size 768] [--scenes 8] [--model run/model.pt]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from geodetect.config import load_config


def tiny_model(work: Path, scene) -> Path:
    from geodetect.training import train

    config = load_config(
        None,
        {
            "train.epochs": 1,
            "train.chips_per_epoch": 32,
            "train.batch_size": 8,
            "infer.threshold": 0.1,
            "infer.overlap": 64,
        },
    )
    return Path(
        train(
            images=[str(scene.image)],
            labels=str(scene.labels),
            pointclouds=None,
            config=config,
            out_dir=str(work / "run"),
            device="cpu",
            seed=0,
            resume=False,
            progress=False,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=768, help="scene side in pixels")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--model", help="a trained model.pt (default: train a tiny one)")
    args = ap.parse_args()

    import torch

    from geodetect.data import make_sample_data
    from geodetect.inference import infer

    torch.set_num_threads(1)  # the same per-process threads as a Dask worker
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenes = [
            make_sample_data(
                work / f"s{i}", size=args.size, seed=100 + i, cloud=False, name=f"s{i}"
            )
            for i in range(args.scenes)
        ]
        model = Path(args.model) if args.model else tiny_model(work, scenes[0])
        mpx = args.scenes * args.size**2 / 1e6
        print(f"{args.scenes} scenes of {args.size}² px = {mpx:.2f} Mpx, model {model.name}")
        images = [s.image for s in scenes]
        for label, kw in [
            ("in-process (1 thread)", {}),
            ("--workers 1", {"workers": 1}),
            ("--workers 2", {"workers": 2}),
        ]:
            out = work / f"det_{kw.get('workers', 0)}.gpkg"
            t0 = time.perf_counter()
            infer(model, images, out=out, device="cpu", **kw)
            dt = time.perf_counter() - t0
            print(f"{label:24s} {dt:7.1f} s   {mpx / dt:6.3f} Mpx/s")


if __name__ == "__main__":
    main()
