"""Real-imagery benchmark (issue 11): prints figures, asserts nothing.

Real case: NEON 10 cm RGB crowns shipped in the `deepforest==2.1.0` wheel (MIT package, NEON
data public domain), fetched once with `pip download` into a cache folder
(GEODETECT_CACHE, default ~/.cache/geodetect). The Yellowstone crop
`2019_YELL_2_528000_4978000_image_crop2.png` (2299 x 2472 px, 574 crowns) is cut in two:
the left two thirds train (half of their crowns as positives, seeded, plus a few negative
polygons), the right third is the held-out test (all its crowns). Cross-site: OSBS_029
(Florida, its own georeferenced .tif) and SOAP_061 (California) with the Yellowstone model.
Metric: AP@0.4 (DeepForest's IoU), with precision / recall at the best-F1 score.

Every scene is a GeoTIFF at 0.1 m so the model's GSD means the same on all of them: the
Yellowstone and SOAP PNGs carry no georeferencing and are written with a 0.1 m pixel in their
UTM zone (placement nominal, only the pixel size matters); OSBS_029.tif is used as shipped.

Negatives: cells of a 64 px grid over the training part whose area (grown by 12 px) touches
no annotated crown, merged into connected regions; the largest few become negative polygons
(bare ground, meadow, road and shadow between the stands: the places no crown was drawn).

Site case (`--cases site`): a user with the Yellowstone model at another site labels the
crowns of the left half of its scene (OSBS: 27, SOAP: 17, plus a few crown-free regions) and
fine-tunes (`train --init`, 20 epochs, as the napari Train tab's retrain); AP@0.4 on the right
half, before and after.

Few-labels case: a generated 2048² scene at 0.25 m with only 10 positives per class plus its
usual negative regions, evaluated (AP50) on bench_infer's three unseen scenes.

    python benchmarks/bench_real.py [--config configs/trees.yaml] [--epochs N]
        [--set train.lr=0.002 ...] [--few-set train.paste_rows=0.5 ...]
        [--cases yell,osbs,soap,site,few] [--pretrain [--pretrain-on all]]
        [--site-model MODEL.pt] [--site-epochs 20]
        [--init MODEL.pt] [--threshold 0.05] [--threads 2] [--seed N] [--keep DIR]
    python benchmarks/bench_real.py --write-sample data    # the committed crop (data/)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.windows import Window

WHEEL = "deepforest==2.1.0"
YELL = "2019_YELL_2_528000_4978000_image_crop2"
GSD = 0.1
SPLIT = 2 / 3  # train on x < SPLIT * width, test on the rest
NEG_CELL, NEG_MARGIN, N_NEG = 64, 12, 6


def cache_dir() -> Path:
    return Path(os.environ.get("GEODETECT_CACHE", Path.home() / ".cache" / "geodetect"))


def fetch() -> Path:
    """The wheel's data/ folder, downloaded and unzipped once."""
    cache = cache_dir()
    data = cache / "deepforest-2.1.0" / "data"
    if (data / f"{YELL}.xml").is_file():
        return data
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("deepforest-2.1.0-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = list(cache.glob("deepforest-2.1.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        for name in z.namelist():
            if name.startswith("deepforest/data/") or "dist-info/licenses" in name:
                target = cache / "deepforest-2.1.0" / name.split("/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    return data


def voc_boxes(path: Path) -> np.ndarray:
    """(N, 4) xmin, ymin, xmax, ymax in pixels from a Pascal VOC file."""
    root = ET.parse(path).getroot()
    keys = ("xmin", "ymin", "xmax", "ymax")
    rows = [[float(o.find(f"bndbox/{k}").text) for k in keys] for o in root.iter("object")]
    return np.asarray(rows, np.float64).reshape(-1, 4)


def write_tif(path: Path, chw: np.ndarray, epsg: int, x0: float, y0: float) -> rasterio.Affine:
    transform = from_origin(x0, y0, GSD, GSD)
    profile = dict(
        driver="GTiff", width=chw.shape[2], height=chw.shape[1], count=chw.shape[0],
        dtype=chw.dtype, crs=f"EPSG:{epsg}", transform=transform, tiled=True, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(chw)
    return transform


def frame(xyxy: np.ndarray, transform, crs, label: str = "positive", negs=()) -> gpd.GeoDataFrame:
    """Axis-aligned crown boxes (pixels) -> a contract label table in map coordinates."""
    polys = [shapely.box(*b) for b in xyxy]
    geoms = [shapely.affinity.affine_transform(g, transform.to_shapely()) for g in polys]
    negs = [shapely.affinity.affine_transform(g, transform.to_shapely()) for g in negs]
    df = pd.DataFrame(
        {
            "label": [label] * len(geoms) + ["negative"] * len(negs),
            "class": ["tree"] * len(geoms) + [None] * len(negs),
        }
    )
    return gpd.GeoDataFrame(df, geometry=geoms + negs, crs=crs)


def free_regions(
    xyxy: np.ndarray,
    width: int,
    height: int,
    n: int,
    cell: int = NEG_CELL,
    margin: int = NEG_MARGIN,
) -> list:
    """The n largest crown-free regions (pixel frame): see the module docstring."""
    rows, cols = height // cell, width // cell
    grown = shapely.box(*(xyxy + [-margin, -margin, margin, margin]).T)
    tree = shapely.STRtree(grown)
    cells = [
        shapely.box(c * cell, r * cell, (c + 1) * cell, (r + 1) * cell)
        for r in range(rows)
        for c in range(cols)
    ]
    free = [g for g in cells if len(tree.query(g, predicate="intersects")) == 0]
    merged = shapely.unary_union(free)
    parts = list(getattr(merged, "geoms", [merged]))
    parts.sort(key=lambda g: -g.area)
    return [p.buffer(-2) for p in parts[:n] if not p.is_empty]


def build(data: Path, work: Path, seed: int = 0) -> dict:
    """Scenes, label files and truth files of the three real cases."""
    work.mkdir(parents=True, exist_ok=True)
    with rasterio.open(data / f"{YELL}.png") as src:
        img = src.read()
    boxes = voc_boxes(data / f"{YELL}.xml")
    height, width = img.shape[1:]
    cut = int(round(SPLIT * width))
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    # Yellowstone: UTM 12N, the NEON tile's top-left (placement nominal)
    x0, y0 = 528000.0, 4979000.0
    t_train = write_tif(work / "yell_train.tif", img[:, :, :cut], 32612, x0, y0)
    t_test = write_tif(work / "yell_test.tif", img[:, :, cut:], 32612, x0 + cut * GSD, y0)
    inside = boxes[:, 2] <= cut  # crowns wholly in the training part
    rng = np.random.default_rng(seed)
    idx = np.nonzero(inside)[0]
    chosen = np.sort(rng.choice(idx, len(idx) // 2, replace=False))
    negs = free_regions(boxes[boxes[:, 0] < cut], cut, height, N_NEG)
    labels = frame(boxes[chosen], t_train, "EPSG:32612", negs=negs)
    labels.to_file(work / "yell_labels.gpkg")
    test = boxes[cx >= cut].copy()
    test[:, [0, 2]] = np.clip(test[:, [0, 2]] - cut, 0, width - cut)
    frame(test, t_test, "EPSG:32612").to_file(work / "yell_truth.gpkg")
    cases = {
        "yell": {
            "image": work / "yell_test.tif",
            "truth": work / "yell_truth.gpkg",
            "train": work / "yell_train.tif",
            "labels": work / "yell_labels.gpkg",
            "n_pos": len(chosen),
            "n_train_crowns": int(inside.sum()),
            "negatives": [round(g.area / 1e4, 1) for g in negs],  # 100 px squares (10 m²)
        }
    }
    with rasterio.open(data / "OSBS_029.tif") as src:
        t_osbs, crs = src.transform, src.crs
    frame(voc_boxes(data / "OSBS_029.xml"), t_osbs, crs).to_file(work / "osbs_truth.gpkg")
    cases["osbs"] = {"image": data / "OSBS_029.tif", "truth": work / "osbs_truth.gpkg"}
    with rasterio.open(data / "SOAP_061.png") as src:
        soap = src.read()[:3]
    t_soap = write_tif(work / "soap.tif", soap, 32611, 290000.0, 4100000.0)  # nominal
    frame(voc_boxes(data / "SOAP_061.xml"), t_soap, "EPSG:32611").to_file(work / "soap_truth.gpkg")
    cases["soap"] = {"image": work / "soap.tif", "truth": work / "soap_truth.gpkg"}
    return cases


def site_halves(real: dict, data: Path, work: Path) -> dict:
    """The other sites as a user meets them: the left half of each scene labelled (every
    crown wholly in it, and up to 3 crown-free regions of a 20 px grid: OSBS has no 64 px
    cell free of crowns), the right half held out (every crown centred in it)."""
    xml = {"osbs": data / "OSBS_029.xml", "soap": data / "SOAP_061.xml"}
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("osbs", "soap"):
        boxes = voc_boxes(xml[name])
        with rasterio.open(real[name]["image"]) as src:
            cut, width, height = src.width // 2, src.width, src.height
            parts = {}
            for part, win in (
                ("train", ((0, height), (0, cut))),
                ("test", ((0, height), (cut, width))),
            ):
                window = Window.from_slices(*win)
                transform = src.window_transform(window)
                profile = dict(
                    driver="GTiff", width=window.width, height=window.height, count=3,
                    dtype="uint8", crs=src.crs, transform=transform, tiled=False,
                )  # fmt: skip
                path = work / f"{name}_{part}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(indexes=[1, 2, 3], window=window))
                parts[part] = (path, transform, src.crs)
        inside = boxes[:, 2] <= cut
        negs = free_regions(boxes[boxes[:, 0] < cut], cut, height, 3, cell=20, margin=4)
        (train, t_train, crs), (test, t_test, _) = parts["train"], parts["test"]
        frame(boxes[inside], t_train, crs, negs=negs).to_file(work / f"{name}_labels.gpkg")
        held = boxes[(boxes[:, 0] + boxes[:, 2]) / 2 >= cut] - [cut, 0, cut, 0]
        held[:, [0, 2]] = np.clip(held[:, [0, 2]], 0, width - cut)
        frame(held, t_test, crs).to_file(work / f"{name}_truth_right.gpkg")
        out[name] = {
            "train": train, "labels": work / f"{name}_labels.gpkg", "test": test,
            "truth": work / f"{name}_truth_right.gpkg", "n_pos": int(inside.sum()),
            "n_neg": len(negs),
        }  # fmt: skip
    return out


SAMPLE_WINDOW = (864, 0, 320, 320)  # col, row, width, height in the Yellowstone crop


def write_sample(data: Path, out: Path) -> tuple[Path, Path]:
    """data/yell_crowns.tif (JPEG-compressed 0.1 m GeoTIFF) + data/yell_crowns.geojson: a
    320² window of the training part with every annotated crown (clipped at the edge) as a
    positive and its largest crown-free region as a negative; used by tests/test_real.py."""
    c0, r0, w, h = SAMPLE_WINDOW
    with rasterio.open(data / f"{YELL}.png") as src:
        img = src.read()[:, r0 : r0 + h, c0 : c0 + w]
    out.mkdir(parents=True, exist_ok=True)
    transform = from_origin(528000.0 + c0 * GSD, 4979000.0 - r0 * GSD, GSD, GSD)
    profile = dict(
        driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:32612",
        transform=transform, compress="jpeg", jpeg_quality=90, photometric="ycbcr",
    )  # fmt: skip
    tif = out / "yell_crowns.tif"
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(img)
    boxes = voc_boxes(data / f"{YELL}.xml") - [c0, r0, c0, r0]
    touch = (boxes[:, 2] > 0) & (boxes[:, 0] < w) & (boxes[:, 3] > 0) & (boxes[:, 1] < h)
    boxes = np.clip(boxes[touch], 0, [w, h, w, h])
    negs = free_regions(boxes, w, h, 1)
    gdf = frame(boxes, transform, "EPSG:32612", negs=negs)
    gdf["image"] = tif.name
    path = out / "yell_crowns.geojson"
    gdf.to_file(path, driver="GeoJSON")
    return tif, path


def few_labels_set(work: Path) -> tuple[Path, Path]:
    """A 2048² generated scene whose labels keep 10 positives per class + all negatives."""
    from geodetect.data import make_sample_data

    data = make_sample_data(work / "few", size=2048, seed=0, cloud=False, name="few")
    gdf = gpd.read_file(data.labels)
    pos = gdf[gdf["label"] == "positive"]
    keep = [g.sample(n=min(10, len(g)), random_state=0) for _, g in pos.groupby("class")]
    out = gpd.GeoDataFrame(
        pd.concat([*keep, gdf[gdf["label"] == "negative"]], ignore_index=True), crs=gdf.crs
    )
    path = work / "few" / "few10_labels.gpkg"
    out.to_file(path)
    return data.image, path


def scores(pred: Path, truth, iou: float) -> dict:
    from geodetect.evaluation import evaluate

    m = evaluate(pred, truth, iou=iou)
    return m["classes"]


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _overrides(items: list[str], epochs: int | None) -> dict:
    """Dotted `key=value` overrides (values as YAML), plus --epochs when given."""
    import yaml

    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    if epochs:
        out["train.epochs"] = epochs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML for the real cases (e.g. trees.yaml)")
    ap.add_argument("--few-config", default=None, help="YAML for the few-labels case")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[],
                    help="overrides of the real cases' config, like train.lr=0.002")  # fmt: skip
    ap.add_argument("--few-set", nargs="*", default=[],
                    help="overrides of the few-labels config: train.paste_rows=0.5")  # fmt: skip
    ap.add_argument("--cases", default="yell,osbs,soap,few")
    ap.add_argument("--pretrain", action="store_true", help="pretrain the backbone first")
    ap.add_argument("--pretrain-on", choices=["train", "all"], default="train",
                    help="pretrain on the training part, or on every scene of the real cases "
                    "(unlabelled: both Yellowstone parts, OSBS, SOAP)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed (the label split stays 0): run-to-run spread")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threshold", type=float, default=0.05,
                    help="detections kept for AP (low: AP is the whole PR curve)")  # fmt: skip
    ap.add_argument("--init", default=None, help="warm-start the real case from this model")
    ap.add_argument("--site-model", default=None,
                    help="the site case fine-tunes this Yellowstone model (default: the one "
                    "this run trains)")  # fmt: skip
    ap.add_argument("--site-epochs", type=int, default=20,
                    help="site case: fine-tuning epochs (the Train tab's retrain: 20)")  # fmt: skip
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the runs in")
    ap.add_argument("--write-sample", type=Path, default=None, metavar="DIR",
                    help="only write the small committed crop (data/) and exit")  # fmt: skip
    args = ap.parse_args()
    if args.write_sample:
        print(*write_sample(fetch(), args.write_sample))
        return

    import torch

    torch.set_num_threads(args.threads)
    from geodetect.config import load_config
    from geodetect.inference import infer
    from geodetect.training import train

    overrides = _overrides(args.set, args.epochs)
    few_overrides = _overrides(args.few_set, args.epochs)
    cases = args.cases.split(",")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_real_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}; load: {os.getloadavg()[0]:.1f}")
    results: dict = {}
    real: dict | None = None  # the real cases' scenes, built once
    model = args.site_model
    if "site" in cases and not (model or {"yell", "osbs", "soap"} & set(cases)):
        ap.error("the site case needs --site-model or a real case (yell, osbs, soap) to train one")
    if {"yell", "osbs", "soap"} & set(cases):
        real = build(fetch(), work / "real")
        y = real["yell"]
        print(
            f"yellowstone: {y['n_pos']} positives of {y['n_train_crowns']} training crowns, "
            f"{len(y['negatives'])} negatives (areas, 100 px² units: {y['negatives']})"
        )
        config = load_config(args.config, overrides)
        if args.pretrain:
            from geodetect.pretraining import pretrain

            t0 = time.perf_counter()
            scenes = [str(y["train"])]
            if args.pretrain_on == "all":  # unlabelled pixels of every scene, test parts too
                scenes += [str(c["image"]) for c in real.values()]
            bb = pretrain(scenes, work / "backbone.pt", config=config, device=args.device)
            config = load_config(args.config, {**overrides, "model.pretrained": str(bb)})
            print(f"pretrain on {len(scenes)} scenes: {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        model = train(
            [str(y["train"])], str(y["labels"]), config=config, out_dir=work / "run_real",
            device=args.device, seed=args.seed, init=args.init,
        )  # fmt: skip
        secs = time.perf_counter() - t0
        metrics = json.loads((work / "run_real" / "metrics.json").read_text())
        runs = metrics.get("members") or [metrics]  # an ensemble: each member's own run
        val = " / ".join(fmt(r["epochs"][-1]["val_mean_ap50"]) for r in runs)
        print(
            f"train (real): {secs:.0f} s, {config.train.epochs} epochs x {len(runs)}, "
            f"val AP50 {val}; load {os.getloadavg()[0]:.1f}"
        )
        for name in ("yell", "osbs", "soap"):
            if name not in cases:
                continue
            c = real[name]
            pred = work / f"{name}_pred.gpkg"
            t0 = time.perf_counter()
            infer(model, [str(c["image"])], out=pred, device=args.device, threshold=args.threshold)
            m = scores(pred, c["truth"], 0.4)["tree"]
            results[name] = m
            print(
                f"{name:<5} AP@0.4 {fmt(m['ap'])}  P {fmt(m['precision'])}  R {fmt(m['recall'])}"
                f"  (n={m['n_truth']}, {m['n_pred']} detections, infer "
                f"{time.perf_counter() - t0:.1f} s)"
            )
    if "site" in cases:
        real = real or build(fetch(), work / "real")
        sites = site_halves(real, fetch(), work / "site")
        config = load_config(args.config, {**overrides, "train.epochs": args.site_epochs})
        for name, c in sites.items():
            before = work / f"site_{name}_yell.gpkg"
            infer(model, [str(c["test"])], out=before, device=args.device, threshold=args.threshold)
            t0 = time.perf_counter()
            tuned = train([str(c["train"])], str(c["labels"]), config=config,
                          out_dir=work / f"run_site_{name}", device=args.device, seed=args.seed,
                          init=model)  # fmt: skip
            secs = time.perf_counter() - t0
            after = infer(tuned, [str(c["test"])], out=work / f"site_{name}_tuned.gpkg",
                          device=args.device, threshold=args.threshold)  # fmt: skip
            m0, m1 = (scores(p, c["truth"], 0.4)["tree"] for p in (before, after))
            results[f"site_{name}"] = {"yellowstone_model": m0, "fine_tuned": m1, "seconds": secs}
            print(
                f"site  {name} right half (n={m1['n_truth']}): Yellowstone model AP@0.4 "
                f"{fmt(m0['ap'])} -> fine-tuned on the left half ({c['n_pos']} crowns, "
                f"{c['n_neg']} negatives, {args.site_epochs} epochs, {secs:.0f} s) AP@0.4 "
                f"{fmt(m1['ap'])}  P {fmt(m1['precision'])}  R {fmt(m1['recall'])}"
            )
    if "few" in cases:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_infer import unseen_scenes

        image, labels = few_labels_set(work)
        config = load_config(args.few_config, few_overrides)
        if args.pretrain:  # the backbone from the scene's own unlabelled pixels
            from geodetect.pretraining import pretrain

            t0 = time.perf_counter()
            bb = pretrain([str(image)], work / "backbone_few.pt", config=config, device=args.device)
            config = load_config(args.few_config, {**few_overrides, "model.pretrained": str(bb)})
            print(f"pretrain (few): {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        model = train([str(image)], str(labels), config=config, out_dir=work / "run_few",
                      device=args.device, seed=args.seed)  # fmt: skip
        secs = time.perf_counter() - t0
        images, truth = unseen_scenes(work / "unseen", "test", gsd=0.25, colour_cast=None)
        # AP50 of what `infer` writes by default (the model's threshold), and over the whole
        # ranked list down to --threshold (as the real cases above are scored)
        for key, thr in (("few", None), ("few_all", args.threshold)):
            pred = infer(model, images, out=work / f"{key}_pred.gpkg", device=args.device,
                         threshold=thr)  # fmt: skip
            m = scores(pred, truth, 0.5)
            parts = []
            for cls, c in m.items():
                hd = c["heading_correct_rate"]
                parts.append(
                    f"{cls} AP50 {fmt(c['ap'])} R {fmt(c['recall'])}"
                    + ("" if hd is None else f" headings right {hd:.0%}")
                )
            results[key] = m
            where = "model threshold" if thr is None else f"threshold {thr}"
            print(f"few   train {secs:.0f} s | {where} | " + " | ".join(parts))
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
