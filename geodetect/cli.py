"""The `geodetect` command line: parse, call one library function, print `error: …` on failure.

Every subcommand maps to one function in the library; heavy imports happen inside the handlers
so `geodetect --help` stays instant. Tests call `main(argv)` in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from geodetect import __version__
from geodetect.errors import GeodetectError, InputError, is_out_of_memory


def _progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal; quiet in pipes unless -v."""
    return bool(getattr(args, "verbose", False)) or sys.stderr.isatty()


def _cmd_train(args: argparse.Namespace) -> int:
    from geodetect.config import load_config
    from geodetect.training import train

    if args.extend and not args.resume:
        raise InputError("--extend only applies to --resume (a longer schedule for that run)")
    config = load_config(args.config, {"train.epochs": args.epochs})
    model_path = train(
        images=args.images,
        labels=args.labels,
        pointclouds=args.pointcloud,
        config=config,
        out_dir=args.out,
        device=args.device,
        seed=args.seed,
        resume=args.resume,
        progress=_progress_enabled(args),
        extend=args.extend,
        init=args.init,
    )
    print(model_path)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from geodetect.config import load_config
    from geodetect.pretraining import pretrain

    config = load_config(args.config, {"pretrain.epochs": args.epochs})
    out = pretrain(
        images=args.images,
        out=args.out,
        config=config,
        device=args.device,
        seed=args.seed,
        progress=_progress_enabled(args),
    )
    print(out)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from geodetect.atomic import check_not_input
    from geodetect.inference import infer
    from geodetect.scenes import expand_images
    from geodetect.stac import resolve_scenes

    check_not_input(args.out, [args.from_list, *(args.stac or [])])
    images = []
    if args.images or args.from_list or not args.stac:
        images = resolve_scenes(expand_images(args.images, args.from_list), args.asset)
    if args.stac:
        images = list(dict.fromkeys([*images, *resolve_scenes(args.stac, args.asset, True)]))
    out = infer(
        model=args.model,
        images=images,
        pointclouds=args.pointcloud,
        out=args.out,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        threshold=args.threshold,
        tta=args.tta,
        progress=_progress_enabled(args),
        workers=args.workers,
        scheduler=args.scheduler,
        resume=args.resume,
        shard=args.shard,
        precision=args.precision,
        aoi=args.aoi,
        mosaic=args.mosaic,
    )
    print(out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from geodetect.export import export_onnx

    print(export_onnx(args.model, args.out, int8=args.int8, calibrate=args.calibrate))
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from geodetect.config import load_config
    from geodetect.samples import write_samples

    config = load_config(args.config)
    index = write_samples(
        images=args.images,
        labels=args.labels,
        pointclouds=args.pointcloud,
        config=config,
        out_dir=args.out,
    )
    print(index)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from geodetect.evaluation import evaluate

    metrics = evaluate(
        pred=args.pred, truth=args.truth, iou=args.iou, errors=args.errors, region=args.region
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from geodetect.atomic import check_not_input
    from geodetect.convert import convert_labels

    check_not_input(args.dst, [args.src, *(args.image or [])], "OUT")
    summary = convert_labels(args.src, args.dst, args.image, args.src_format, args.dst_format)
    if summary["dropped_negatives"]:
        print(
            f"note: {summary['dropped_negatives']} negative polygon(s) left out: "
            f"{args.dst} has no place for them",
            file=sys.stderr,
        )
    print("\n".join(summary["out"]))
    return 0


def _cmd_rasterize(args: argparse.Namespace) -> int:
    from geodetect.pointcloud import rasterize_file

    out = rasterize_file(
        args.las,
        args.out,
        like=args.like,
        resolution=args.resolution,
        kind=args.kind,
        progress=_progress_enabled(args),
    )
    print(out)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from geodetect.demo import run_demo

    run_demo(out_dir=args.out, progress=_progress_enabled(args), quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; options follow ../shared/CONTRACT.md."""
    parser = argparse.ArgumentParser(
        prog="geodetect",
        description="Rotation-aware object detection in geospatial imagery and point clouds.",
    )
    parser.add_argument("--version", action="version", version=f"geodetect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "-v", "--verbose", action="store_true", help="show progress even when not on a terminal"
        )
        return p

    p = add("train", "train a detector from positive and negative samples")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", required=True, metavar="LABELS")
    p.add_argument("--pointcloud", nargs="+", metavar="LAS", help="one per IMAGE, same order")
    p.add_argument("--config", metavar="YAML")
    p.add_argument("--out", default="run", metavar="DIR")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in DIR")
    p.add_argument(
        "--extend", action="store_true", help="with --resume: allow more epochs than planned"
    )
    p.add_argument(
        "--init", metavar="MODEL.pt", help="start from an existing geodetect model (fine-tune)"
    )
    p.set_defaults(func=_cmd_train)

    p = add("pretrain", "learn a backbone from unlabelled scenes (self-supervised)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, metavar="BACKBONE.pt")
    p.add_argument("--config", metavar="YAML")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.set_defaults(func=_cmd_pretrain)

    p = add("infer", "detect objects over whole scenes")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="scene files or glob patterns")
    p.add_argument("--pointcloud", nargs="+", metavar="LAS", help="one per IMAGE, same order")
    p.add_argument("--out", default="detections.gpkg", metavar="PATH")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--tile", type=int, metavar="PX")
    p.add_argument("--overlap", type=int, metavar="PX")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--threshold", type=float, metavar="F")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--stac", nargs="+", metavar="ITEM", help="STAC item(s) (JSON file or URL) as scenes"
    )
    p.add_argument("--asset", metavar="KEY", help="the items' asset to read (default: visual)")
    p.add_argument(
        "--aoi", metavar="POLYGONS", help="only tiles meeting these polygons (any CRS) are read"
    )
    p.add_argument(
        "--mosaic", action="store_true", help="the scenes are abutting tiles of one surface"
    )
    # scale-out (docs/scaleout.md)
    p.add_argument("--from-list", metavar="FILE", help="more scenes (or STAC items), one per line")
    p.add_argument("--workers", type=int, metavar="N", help="run tasks on a local Dask cluster")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="an existing Dask scheduler")
    p.add_argument("--resume", action="store_true", help="redo only unfinished tasks")
    p.add_argument("--shard", metavar="i/N", help="run shard i of N (1-based)")
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast (.pt)"
    )
    p.set_defaults(func=_cmd_infer)

    p = add("export", "write a model as ONNX (fp32, or --int8 calibrated on training scenes)")
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("--out", required=True, metavar="MODEL.onnx")
    p.add_argument("--int8", action="store_true", help="static int8 quantisation (onnxruntime)")
    p.add_argument("--calibrate", nargs="+", metavar="IMAGE", help="training scenes, for --int8")
    p.set_defaults(func=_cmd_export)

    p = add("samples", "write the normalised chips the trainer sees, plus an index CSV")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", required=True, metavar="LABELS")
    p.add_argument("--pointcloud", nargs="+", metavar="LAS")
    p.add_argument("--config", metavar="YAML")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=_cmd_samples)

    p = add("evaluate", "score detections against truth; prints metrics as JSON")
    p.add_argument("pred", metavar="PRED")
    p.add_argument("truth", metavar="TRUTH")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument(
        "--errors", metavar="ERRORS.gpkg", help="write false positives/negatives as layers"
    )
    p.add_argument(
        "--region", metavar="POLYGONS", help="score only objects centred in these areas (any CRS)"
    )
    p.set_defaults(func=_cmd_evaluate)

    p = add("convert", "convert labels/detections to and from DOTA, YOLO-OBB, COCO, CVAT XML")
    p.add_argument(
        "src", metavar="IN", help="vector file, DOTA .txt, YOLO-OBB .yaml, COCO .json, CVAT .xml"
    )
    p.add_argument("dst", metavar="OUT", help="the same kinds, chosen by extension")
    p.add_argument(
        "--image", nargs="+", metavar="SCENE", help="scene(s) that map pixels to the CRS"
    )
    kinds = ["vector", "dota", "yolo", "coco", "cvat"]
    p.add_argument(
        "--from", dest="src_format", choices=kinds, help="IN's format (default: by extension)"
    )
    p.add_argument(
        "--to", dest="dst_format", choices=kinds, help="OUT's format (default: by extension)"
    )
    p.set_defaults(func=_cmd_convert)

    p = add("rasterize", "turn a LAS/LAZ point cloud into a DSM, DTM or nDSM GeoTIFF")
    p.add_argument("las", metavar="LAS")
    grid = p.add_mutually_exclusive_group(required=True)
    grid.add_argument("--like", metavar="IMAGE", help="use this scene's exact grid")
    grid.add_argument("--resolution", type=float, metavar="M", help="cell size in CRS units")
    p.add_argument("--out", required=True, metavar="DEM.tif")
    p.add_argument("--kind", choices=["dsm", "dtm", "ndsm"], default="dsm")
    p.set_defaults(func=_cmd_rasterize)

    p = add("demo", "make sample data, train, infer, evaluate")
    p.add_argument("--out", default="demo_out", metavar="DIR")
    p.add_argument("--quick", action="store_true", help="tiny settings (for tests)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status instead of exiting (tests call this)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GeodetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc.filename or exc}: no such file", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder where a file was expected, no permission, disk full
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"error: out of memory; {_oom_hint(args.command)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one, wherever it escapes
        if not is_out_of_memory(exc):
            raise
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "CUDA"
        print(f"error: out of memory ({detail}); {_oom_hint(args.command)}", file=sys.stderr)
        return 2


_OOM_HINTS = {
    "train": "lower train.batch_size or data.chip_size, or use --device cpu",
    "pretrain": "lower pretrain.batch_size or data.chip_size, or use --device cpu",
    "infer": "use a smaller --tile or --batch-size, or --device cpu",
}


def _oom_hint(command: str) -> str:
    return _OOM_HINTS.get(command, "free some memory and run it again")


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
