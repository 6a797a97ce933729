"""Inference levers, one at a time: prints figures, asserts nothing.

Each lever is timed as wall seconds and as process CPU seconds (user + system, all threads):
on a shared machine the CPU figure is the steadier of the two, and every ratio is taken
within one run. Uses bench_infer's cached model and dense 4096² scene (run that first).

    python benchmarks/bench_levers.py [--threads 2] [--work bench_out/infer]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def clock(fn, repeat: int = 3) -> tuple[float, float]:
    """Best (wall, CPU) seconds of `fn()` over `repeat` runs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def network_levers(model: Path, threads: int) -> None:
    import torch

    from geodetect.model import fuse_conv_bn, load_model

    torch.set_num_threads(threads)
    x = torch.randn(4, 3, 512, 512)
    net, _ = load_model(model)
    fused = fuse_conv_bn(load_model(model)[0])
    cl = fuse_conv_bn(load_model(model)[0]).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    cases = {
        "as trained (BN separate), no_grad": (net, x, torch.no_grad),
        "as trained, inference_mode": (net, x, torch.inference_mode),
        "conv+BN folded, inference_mode": (fused, x, torch.inference_mode),
        "folded + channels_last": (cl, xc, torch.inference_mode),
    }
    base = None
    for name, (m, inp, ctx) in cases.items():
        with ctx():
            m(inp)
            wall, cpu = clock(lambda m=m, inp=inp: m(inp))
        base = base or cpu
        mpx = 1.048576 / wall
        print(f"net  {name:<36} {mpx:6.2f} Mpx/s wall, CPU {cpu:.2f} s ({base / cpu:.2f}×)")
    try:
        import onnxruntime as ort

        from geodetect.export import export_onnx

        onnx_path = model.with_suffix(".onnx")
        if not onnx_path.exists():
            export_onnx(model, onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        for path in (onnx_path, model.with_name(model.stem + "_int8.onnx")):
            if not path.exists():
                continue
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            xa = x.numpy()
            sess.run(None, {"image": xa})
            wall, cpu = clock(lambda s=sess, xa=xa: s.run(None, {"image": xa}))
            print(
                f"net  onnxruntime {path.name:<24} {1.048576 / wall:6.2f} Mpx/s wall, "
                f"CPU {cpu:.2f} s ({base / cpu:.2f}×)"
            )
    except ImportError:
        print("net  onnxruntime: not installed")


def decode_levers(model: Path, scene: Path) -> None:
    """Old torch decode vs the numpy one, and the NMS, on a dense 1024² tile's outputs."""
    import torch

    from geodetect import geometry
    from geodetect.decoding import decode_arrays
    from geodetect.detection import read_batches
    from geodetect.model import load_model
    from geodetect.modelinfo import ModelInfo
    from geodetect.tiling import plan_tasks, resolve_settings

    net, meta = load_model(model)
    info = ModelInfo.from_meta(meta)
    settings = resolve_settings(info, tile=1024, overlap=128)
    task = plan_tasks([str(scene)], None, info, settings)[0]
    x, _ = next(read_batches(task, info, 1))
    with torch.inference_mode():
        out = net(torch.from_numpy(x))
    arrays = {k: v.numpy() for k, v in out.items()}
    hf = list(meta["has_front"])
    wall, cpu = clock(lambda: decode_arrays(arrays, settings.threshold, hf), 5)
    dets = decode_arrays(arrays, settings.threshold, hf)[0]
    print(f"decode numpy, one 1024² tile ({len(dets['scores'])} objects): {wall * 1e3:.1f} ms")
    wall, cpu = clock(lambda: geometry.rotated_nms(dets["boxes"], dets["scores"], 0.3), 5)
    print(f"rotated NMS over them: {wall * 1e3:.1f} ms")


def tile_levers(model: Path, work: Path, scene: Path, threads: int) -> None:
    """Fresh-process end to end and AP50 on the unseen test scenes per tile / overlap."""
    import geopandas as gpd
    from bench_infer import ap50, fresh_infer, reference_mpx, unseen_scenes

    from geodetect.inference import infer

    images, truth = unseen_scenes(work, "test_025m", gsd=0.25, colour_cast=None)
    dense_truth = gpd.read_file(scene.with_name("dense_truth.gpkg"))
    onnx_path = model.with_suffix(".onnx")
    px = 4096**2 / 1e6
    ref = reference_mpx(4096, threads)
    print(f"reference ResNet-18 to stride 8: {ref:.2f} Mpx/s")
    for tile, overlap in ((512, 128), (768, 128), (1024, 128), (1024, 96)):
        for path in (model, onnx_path):
            out = work / f"lever_{tile}_{overlap}{path.suffix}.gpkg"
            args = ["--tile", str(tile), "--overlap", str(overlap)]
            dt, _ = fresh_infer(path, scene, out, threads, args)
            test = infer(path, images, out=work / "lever_test.gpkg", tile=tile, overlap=overlap)
            print(
                f"tile {tile:4d} overlap {overlap:3d} {path.suffix:<5} "
                f"{px / dt:5.2f} Mpx/s ({px / dt / ref:.2f}× ref) "
                f"AP50 test {ap50(test, truth)} dense {ap50(out, dense_truth)}",
                flush=True,
            )


_IMPORTS = {
    "torch": "import torch",
    "torch path (geodetect.cli + infer + torchrun)": (
        "import geodetect.cli, geodetect.inference, geodetect.torchrun, geodetect.engine"
    ),
    "onnx path (geodetect.cli + infer + onnxrun)": (
        "import geodetect.cli, geodetect.inference, geodetect.onnxrun, geodetect.engine,"
        " onnxruntime"
    ),
    "albumentations (no longer imported by infer)": "import albumentations",
}


def import_levers() -> None:
    for name, stmt in _IMPORTS.items():
        cpu = []
        for _ in range(2):
            code = f"import resource; {stmt}; r = resource.getrusage(resource.RUSAGE_SELF); "
            code += "print(r.ru_utime + r.ru_stime)"
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            cpu.append(float(run.stdout.strip().splitlines()[-1]))
        print(f"import {name:<48} CPU {min(cpu):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=HERE.parent / "bench_out" / "infer")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--no-tiles", action="store_true", help="skip the tile-size runs")
    args = ap.parse_args()
    model = args.model or args.work / "run" / "model.pt"
    scene = args.work / "dense4096" / "dense.tif"
    print(f"load average {os.getloadavg()[0]:.1f}; {args.threads} threads")
    import_levers()
    network_levers(model, args.threads)
    decode_levers(model, scene)
    if not args.no_tiles:
        tile_levers(model, args.work, scene, args.threads)


if __name__ == "__main__":
    main()
