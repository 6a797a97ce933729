"""Inference benchmark: prints figures (and a README table), asserts nothing.

1. End to end, as a user runs it: `geodetect infer MODEL SCENE` in a fresh process (start,
   model load, read, detect, merge, write) on a dense 4096² scene at 0.25 m (a generated
   suburb: ~4,300 vehicles, ~300 buildings) and a sparse one (the same size, nodata except
   three 1024² patches), for torch fp32, torch bf16 (CPUs with AVX512-BF16/AMX), ONNX Runtime
   fp32 and int8. Beside it, a reference measured in the same run: a torchvision ResNet-18
   trunk to stride 8 (conv1…layer2, fp32) over the same pixels in 512² tiles, batch 4, so
   figures compare across machines (and across the load of a shared one).
2. AP50 per class of each variant on three unseen 1024² test scenes (bench_train's) and on
   the dense scene; the .pt's AP50, F1, angle and heading errors on the same scenes and at
   0.35 m GSD with a colour cast, TTA off and on.
3. Peak RSS of a fresh `geodetect infer` (torch fp32 and ONNX Runtime int8) on a dense
   16384² mosaic of the dense scene.

Files are cached in --work (default bench_out/infer, git-ignored): the model (trained with
the default recipe when no --model is given), its .onnx exports and the scenes.

    python benchmarks/bench_infer.py [--threads 2] [--model run/model.pt] [--skip rss]
        [--tile 1024 --batch-size 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEST_SEEDS = (1, 2, 3)  # three unseen 1024² scenes: one alone holds ~20 buildings, a noisy AP
DENSE_SEED = 2
TRAFFIC = 4.4  # vehicles per area vs the default scenes: ~4,300 on the 4096² dense scene


def train_model(work: Path, device: str, epochs: int | None) -> Path:
    """The default recipe (demo.FULL's three tiles) into work/run/model.pt."""
    from geodetect.config import load_config
    from geodetect.demo import FULL
    from geodetect.training import train

    scenes = training_scenes(work)
    overrides = {f"train.{k}": v for k, v in FULL["train"].items()}
    if epochs:
        overrides["train.epochs"] = epochs
    config = load_config(None, overrides)
    labels = work / "train" / "train_labels.gpkg"
    t0 = time.perf_counter()
    model = train(scenes, str(labels), None, config, work / "run", device=device, seed=0)
    print(f"trained on {len(scenes)} scenes in {time.perf_counter() - t0:.0f} s")
    return Path(model)


def training_scenes(work: Path) -> list[str]:
    from geodetect.data import make_training_set
    from geodetect.demo import FULL

    folder = work / "train"
    found = sorted(str(p) for p in folder.glob("*.tif"))
    if found:
        return found
    scenes, _ = make_training_set(folder, seeds=FULL["train_seeds"], size=FULL["size"], cloud=False)
    return [str(d.image) for d in scenes]


def unseen_scenes(work: Path, tag: str, **kw):
    """Unseen test scenes (seeds no training tile uses) and their pooled truth."""
    import geopandas as gpd
    import pandas as pd

    from geodetect.data import make_sample_data

    size = int(round(1024 * 0.25 / kw["gsd"]))  # the same ground footprint at any GSD
    images, truths = [], []
    for seed in TEST_SEEDS:
        name = f"{tag}_{seed}"
        data = make_sample_data(work / name, size=size, seed=seed, cloud=False, name=name, **kw)
        images.append(data.image)
        truths.append(gpd.read_file(data.truth))
    return images, gpd.GeoDataFrame(pd.concat(truths, ignore_index=True), crs=truths[0].crs)


def bench_quality(model: Path, work: Path, device: str, **tiling) -> None:
    """AP50 / F1 / angle and heading errors on the unseen test scenes, also at 0.35 m GSD
    with a colour cast, TTA off and on (the README's quality rows)."""
    from geodetect.evaluation import evaluate
    from geodetect.inference import infer

    cases = {
        "test 0.25 m": dict(gsd=0.25, colour_cast=None),
        "test 0.35 m + cast": dict(gsd=0.35, colour_cast=(1.25, 1.0, 0.8)),
    }
    for name, kw in cases.items():
        tag = name.replace(" ", "_").replace("+", "").replace(".", "")
        images, truth = unseen_scenes(work, tag, **kw)
        for use_tta in (False, True):
            out = infer(
                model,
                images,
                out=work / f"{tag}_{use_tta}.gpkg",
                device=device,
                tta=use_tta,
                **tiling,
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


# ------------------------------------------------------------------------------ scenes


def dense_scene(work: Path, side: int) -> tuple[Path, Path]:
    """(image, truth) of the generated busy suburb (4.4× the default vehicles), cached."""
    from geodetect.data import make_sample_data

    folder = work / f"dense{side}_traffic{TRAFFIC}"
    image, truth = folder / "dense.tif", folder / "dense_truth.gpkg"
    if not image.exists():
        make_sample_data(
            folder, size=side, seed=DENSE_SEED, cloud=False, name="dense", traffic=TRAFFIC
        )
    return image, truth


def sparse_scene(work: Path, side: int, src: Path) -> Path:
    """A side² scene, nodata except three 1024² patches of `src` (deflate, tiled)."""
    path = work / f"sparse{side}_traffic{TRAFFIC}.tif"
    if not path.exists():
        _mosaic(path, src, side, [(0, 0), (side // 2, side // 3), (side - 1024, side - 1024)], 1024)
    return path


def dense_mosaic(work: Path, side: int, src: Path) -> Path:
    """A side² scene tiled edge to edge with copies of `src`, written window by window."""
    import rasterio

    path = work / f"mosaic{side}_traffic{TRAFFIC}.tif"
    if not path.exists():
        with rasterio.open(src) as s:
            step = s.width
        cells = [(r, c) for r in range(0, side, step) for c in range(0, side, step)]
        _mosaic(path, src, side, cells, step)
    return path


def _mosaic(path: Path, src: Path, side: int, cells: list, patch: int) -> None:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as s:
        profile = s.profile
        data = s.read(window=Window(0, 0, patch, patch))
    data = np.where(data == 0, 1, data)  # real content never equals nodata
    profile.update(
        width=side,
        height=side,
        nodata=0,
        compress="deflate",
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r, c in cells:
            h, w = min(patch, side - r), min(patch, side - c)
            dst.write(data[:, :h, :w], window=Window(c, r, w, h))
    tmp.replace(path)


# ------------------------------------------------------------------------------ measuring


def reference_mpx(side: int, threads: int, tiles: int | None = None) -> float:
    """ResNet-18 conv1…layer2 (stride 8, fp32) over side² pixels in 512² tiles, batch 4."""
    import torch
    import torchvision

    torch.set_num_threads(threads)
    r = torchvision.models.resnet18(weights=None).eval()
    trunk = torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)
    n = tiles or (side // 512) ** 2
    x = torch.randn(4, 3, 512, 512)
    with torch.inference_mode():
        trunk(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(max(1, n // 4)):
            trunk(x)
        dt = time.perf_counter() - t0
    return max(1, n // 4) * 4 * 512 * 512 / 1e6 / dt


# The child's own peak in KB: VmHWM of /proc/self/status (reset by exec, Linux). Not
# getrusage's ru_maxrss: Linux carries that across exec, so a child started by this (big)
# benchmark process reported the benchmark's peak (1528 MB for both the torch and the ONNX
# run; /usr/bin/time measured the ONNX one at 487 MB).
_REPORT_OWN_PEAK = (
    "import resource, sys; from geodetect.cli import main; rc = main(sys.argv[1:]); "
    "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')] "
    "if sys.platform.startswith('linux') else []; "
    "print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "file=sys.stderr); sys.exit(rc)"
)


def fresh_infer(model: Path, scene: Path, out: Path, threads: int, extra: list[str]) -> tuple:
    """(seconds, peak RSS MB) of `geodetect infer` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", _REPORT_OWN_PEAK, "infer", str(model), str(scene)]
    t0 = time.perf_counter()
    run = subprocess.run(
        [*cmd, "--out", str(out), *extra], stderr=subprocess.PIPE, text=True, env=env
    )
    dt = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"infer failed: {run.stderr.strip()[-500:]}")
    return dt, int(run.stderr.strip().splitlines()[-1]) / 1024


def ap50(pred: Path, truth) -> dict[str, float | None]:
    from geodetect.evaluation import evaluate

    m = evaluate(pred, truth, iou=0.5)
    return {k: c["ap"] for k, c in m["classes"].items()}


def variants(work: Path, model: Path, device: str, only: list[str]) -> dict[str, tuple]:
    """name -> (model file, extra CLI args); exports cached next to the model."""
    from geodetect.device import cpu_bf16_reason

    out: dict[str, tuple] = {"torch fp32": (model, ["--device", device])}
    if device == "cpu" and cpu_bf16_reason() is None:
        out["torch bf16"] = (model, ["--device", device, "--precision", "bf16"])
    elif device == "cpu":
        print(f"torch bf16: not measured ({cpu_bf16_reason()})")
    if only and not any(name.startswith("onnx") for name in only):
        return {k: v for k, v in out.items() if k in only}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnx rows: not measured (pip install 'geodetect[onnx]')")
        return {k: v for k, v in out.items() if not only or k in only}
    from geodetect.export import export_onnx

    fp32, int8 = model.with_suffix(".onnx"), model.with_name(model.stem + "_int8.onnx")
    if not fp32.exists() or fp32.stat().st_mtime < model.stat().st_mtime:
        export_onnx(model, fp32)
    if not int8.exists() or int8.stat().st_mtime < model.stat().st_mtime:
        t0 = time.perf_counter()
        export_onnx(model, int8, int8=True, calibrate=training_scenes(work))
        print(f"int8 export (calibration on the training scenes): {time.perf_counter() - t0:.0f} s")
    out["onnxruntime fp32"] = (fp32, ["--device", device])
    out["onnxruntime int8"] = (int8, ["--device", device])
    return {k: v for k, v in out.items() if not only or k in only}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="a trained model.pt (default: train one)")
    ap.add_argument("--epochs", type=int, help="training epochs when no --model")
    ap.add_argument("--speed-size", type=int, default=4096)
    ap.add_argument("--rss-size", type=int, default=16384)
    ap.add_argument("--tile", type=int, help="--tile for every run (default: the model's)")
    ap.add_argument("--overlap", type=int, help="--overlap for every run (default: the model's)")
    ap.add_argument("--batch-size", type=int, help="--batch-size for every run (the model's)")
    ap.add_argument("--repeat", type=int, default=1, help="end-to-end runs per cell (best kept)")
    ap.add_argument("--only", nargs="*", default=[], help="variant names, e.g. 'torch fp32'")
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["ap", "quality", "speed", "sparse", "rss"]
    )
    ap.add_argument("--work", type=Path, default=HERE.parent / "bench_out" / "infer")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    model = args.model or work / "run" / "model.pt"
    if not model.exists():
        model = train_model(work, args.device, args.epochs)
    runs = variants(work, model, args.device, args.only)
    chosen = (("tile", args.tile), ("overlap", args.overlap), ("batch-size", args.batch_size))
    tiling = [f"--{k}={v}" for k, v in chosen if v]
    runs = {name: (path, [*extra, *tiling]) for name, (path, extra) in runs.items()}
    dense, truth = dense_scene(work, args.speed_size)
    sparse = sparse_scene(work, args.speed_size, dense)
    px = args.speed_size**2 / 1e6
    rows: dict[str, dict] = {name: {} for name in runs}
    refs = []
    if "speed" not in args.skip:
        refs.append(reference_mpx(args.speed_size, args.threads))
        for name, (path, extra) in runs.items():
            out = work / f"dense_{name.replace(' ', '_')}.gpkg"
            best = min(
                fresh_infer(path, dense, out, args.threads, extra)[0] for _ in range(args.repeat)
            )
            rows[name]["dense"] = px / best
            rows[name]["dense_out"] = out
            if "sparse" not in args.skip:
                sp = work / f"sparse_{name.replace(' ', '_')}.gpkg"
                best = min(
                    fresh_infer(path, sparse, sp, args.threads, extra)[0]
                    for _ in range(args.repeat)
                )
                rows[name]["sparse"] = px / best
            print(
                f"{name:<18} dense {rows[name]['dense']:.2f} Mpx/s  "
                f"sparse {rows[name].get('sparse', float('nan')):.2f} Mpx/s",
                flush=True,
            )
        refs.append(reference_mpx(args.speed_size, args.threads))
        print(f"reference ResNet-18 to stride 8: {refs[0]:.2f} then {refs[1]:.2f} Mpx/s")
    if "ap" not in args.skip:
        from geodetect.inference import infer

        images, test_truth = unseen_scenes(work, "test_025m", gsd=0.25, colour_cast=None)
        for name, (path, _) in runs.items():
            precision = "bf16" if "bf16" in name else "fp32"
            out = infer(
                path,
                images,
                out=work / f"test_{name.replace(' ', '_')}.gpkg",
                device=args.device,
                precision=precision,
                tile=args.tile,
                overlap=args.overlap,
                batch_size=args.batch_size,
            )
            rows[name]["ap_test"] = ap50(out, test_truth)
            if "dense_out" in rows[name]:
                import geopandas as gpd

                rows[name]["ap_dense"] = ap50(rows[name]["dense_out"], gpd.read_file(truth))
            print(
                f"{name:<18} AP50 test {rows[name]['ap_test']}  dense {rows[name].get('ap_dense')}",
                flush=True,
            )
    ref = float(np.mean(refs)) if refs else float("nan")
    print_table(rows, ref, load)
    if "quality" not in args.skip:
        bench_quality(
            model, work, args.device, tile=args.tile, overlap=args.overlap,
            batch_size=args.batch_size,
        )  # fmt: skip
    if "rss" not in args.skip:
        big = dense_mosaic(work, args.rss_size, dense)
        mpx = args.rss_size**2 / 1e6
        for name in ("torch fp32", "onnxruntime int8"):  # the default and the lightest path
            if name not in runs:
                continue
            path, extra = runs[name]
            out = work / f"mosaic_{name.replace(' ', '_')}.gpkg"
            dt, peak = fresh_infer(path, big, out, args.threads, extra)
            print(
                f"rss   {name:<18} {args.rss_size}² dense mosaic: peak RSS {peak:.0f} MB "
                f"({'OK' if peak <= 1024 else 'OVER 1 GB'}), {dt:.0f} s, {mpx / dt:.2f} Mpx/s",
                flush=True,
            )


def _ap(d: dict | None) -> str:
    if not d:
        return "-"
    return " / ".join("-" if v is None else f"{v:.3f}" for v in d.values())


def print_table(rows: dict, ref: float, load: tuple) -> None:
    print(
        f"\nreference (ResNet-18 to stride 8, same run): {ref:.2f} Mpx/s; "
        f"load average at start {load[0]:.1f}"
    )
    print("| variant | dense Mpx/s (× ref) | sparse Mpx/s | AP50 test | AP50 dense |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        d = r.get("dense")
        dense = "-" if d is None else f"{d:.2f} ({d / ref:.2f}×)"
        sparse = "-" if r.get("sparse") is None else f"{r['sparse']:.2f}"
        print(
            f"| {name} | {dense} | {sparse} | {_ap(r.get('ap_test'))} | {_ap(r.get('ap_dense'))} |"
        )


if __name__ == "__main__":
    main()
