"""Review-loop benchmark: after a napari accept/reject round, how much better is the model?

Prints figures, asserts nothing.

The NEON Yellowstone case of bench_real.py (its scenes, labels and truth): train as it does
(or take --model), then each round detect on the training scene and let a simulated user
review, through the plugin's Qt-free `LabelModel` (what the Detect tab's a / x keys call), the
detections scoring >= --review-threshold, at most --budget of them, highest score first:
  accept  IoU >= 0.4 with an annotated crown of the training part that no positive holds yet
          (build() labels only half of them);
  reject  IoU < 0.1 with every annotated crown (its rectangle becomes a hard negative);
  skip    the rest (ambiguous, or a crown already accepted this round); it costs budget.
Detections lying on a drawn positive (IoU >= 0.4) are passed over at no cost: the reviewer
sees them sitting on a label.
The session's labels are saved as the dock saves them, and the previous model is fine-tuned
on them as the Train tab's retrain does (`train --init`, its 20 epochs, the config's lr), then
evaluated like bench_real: AP@0.4 on the held-out right third, OSBS and SOAP. --control makes
the same fine-tunes on the unchanged labels: what the extra epochs alone give. Start both arms
from one model (the review run's --keep DIR/base/model.pt) so only the labels differ.
Row 0 is that starting model (its training seconds, 0 with --model, in the `ft s` column).

    python benchmarks/bench_review.py [--config configs/trees.yaml] [--set k=v ...]
        [--pretrain | --model MODEL.pt] [--rounds 2] [--budget 60] [--review-threshold 0.5]
        [--ft-epochs 20] [--ft-set train.lr=0.001 ...] [--control]
        [--threshold 0.05] [--threads 2] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely

sys.path.insert(0, str(Path(__file__).parent))
from bench_real import YELL, _overrides, build, fetch, fmt, frame, scores, voc_boxes  # noqa: E402

ACCEPT_IOU, REJECT_IOU = 0.4, 0.1
DETECT_THRESHOLD = 0.3  # the Detect tab's default: the review layer holds these
FT_EPOCHS = 20  # the Train tab's default epochs (it sets no lr: the config's)
HEADER = (
    f"{'round':>5} {'pos':>4} {'neg':>4} {'acc':>4} {'rej':>4} {'skip':>4} {'ft s':>5}  "
    f"{'yell AP@0.4 / P / R':<21} {'osbs':>5} {'soap':>5}"
)


def iou(a, b) -> np.ndarray:
    """(len(a), len(b)) polygon IoU: the rectangles are few hundred, a dense matrix is fine."""
    a, b = np.asarray(a, object)[:, None], np.asarray(b, object)[None, :]
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def train_crowns(data: Path, scene: Path) -> np.ndarray:
    """Every annotated crown of the training part (clipped at the cut), map frame."""
    with rasterio.open(scene) as src:
        transform, crs, width = src.transform, src.crs, src.width
    boxes = voc_boxes(data / f"{YELL}.xml")
    boxes = boxes[boxes[:, 0] < width]
    boxes[:, 2] = np.minimum(boxes[:, 2], width)
    return np.asarray(frame(boxes, transform, crs).geometry)


def session_for(scene: Path, labels: Path):
    """The dock's labelling session of a scene (the reader's metadata), its labels loaded."""
    from geodetect.labels import read_labels
    from geodetect.plugin import _label_layer as ll
    from geodetect.plugin._coords import KEY
    from geodetect.plugin._model import LabelModel
    from geodetect.plugin._reader import scene_layer

    meta = scene_layer(str(scene))[1]["metadata"][KEY]
    session = LabelModel(ll.LabelFrame.from_meta(meta), {"tree": False})
    session.load(read_labels(labels))
    return session


def review(session, dets: gpd.GeoDataFrame, crowns: np.ndarray, cut: float, budget: int) -> dict:
    """One simulated round: the detections become the review layer, then a or x on each
    reviewed one, one at a time in score order, as a person presses the keys."""
    from geodetect.plugin import _label_layer as ll

    session.set_detections(dets)
    feats = session.state.detections.features
    corners = ll.rectangle_corners(
        feats[ll.BOX_COLS].to_numpy(np.float64), feats["heading_deg"].to_numpy(), session.frame
    )
    polys = shapely.polygons(corners)
    score = feats["score"].to_numpy(np.float64)
    order = [i for i in np.argsort(-score, kind="stable") if score[i] >= cut]
    labels = session.labels_frame()
    pos = np.asarray(labels.geometry[labels["label"] == "positive"])
    held = (iou(crowns, pos) >= ACCEPT_IOU).any(axis=1) if len(pos) else np.zeros(len(crowns), bool)
    on_pos = np.zeros(len(order), bool)
    if len(pos) and order:
        on_pos = (iou(polys[order], pos) >= ACCEPT_IOU).any(axis=1)
    passed = int(on_pos.sum())  # on a drawn label: seen at a glance, not reviewed
    order = [i for i, on in zip(order, on_pos, strict=True) if not on][:budget]
    m = iou(polys[order], crowns) if order else np.zeros((0, len(crowns)))
    alive = list(range(len(polys)))  # row of each original detection in the shrinking layer
    out = dict.fromkeys(("accepted", "rejected", "merged", "on_label", "rej_on_crown"), 0)
    union = shapely.union_all(crowns)
    for k, i in enumerate(order):
        best = int(np.argmax(m[k])) if len(crowns) else -1
        if best >= 0 and m[k, best] >= ACCEPT_IOU and not held[best]:
            added, merged = session.accept([alive.index(i)])
            held[best] = True
            out["accepted"] += added
            out["merged"] += merged
        elif not len(crowns) or m[k].max() < REJECT_IOU:
            # IoU < 0.1 can still be a small box inside a big crown: count those negatives
            inside = shapely.area(shapely.intersection(polys[i], union))
            out["rej_on_crown"] += int(inside >= 0.5 * shapely.area(polys[i]))
            out["rejected"] += session.reject([alive.index(i)])
        else:
            out["on_label"] += int(best >= 0 and m[k, best] >= ACCEPT_IOU)
            continue
        alive.remove(i)
    out["skipped"] = len(order) - out["accepted"] - out["rejected"]  # merged ones included
    out["passed"] = passed
    return out


def evaluate_all(model: Path, real: dict, work: Path, threshold: float, device: str) -> dict:
    """AP@0.4 / P / R on the held-out right third, OSBS and SOAP, as bench_real."""
    from geodetect.inference import infer

    out = {}
    for name in ("yell", "osbs", "soap"):
        pred = work / f"{name}_pred.gpkg"
        infer(model, [str(real[name]["image"])], out=pred, device=device, threshold=threshold)
        out[name] = scores(pred, real[name]["truth"], 0.4)["tree"]
    return out


def row(rnd: int, counts: dict, n_pos: int, n_neg: int, secs: float, m: dict) -> str:
    y = m["yell"]
    yell = f"{fmt(y['ap'])} / {fmt(y['precision'])} / {fmt(y['recall'])}"
    c = [counts.get(k, "-") for k in ("accepted", "rejected", "skipped")]
    return (
        f"{rnd:>5} {n_pos:>4} {n_neg:>4} {c[0]:>4} {c[1]:>4} {c[2]:>4} {secs:>5.0f}  "
        f"{yell:<21} {fmt(m['osbs']['ap']):>5} {fmt(m['soap']['ap']):>5}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML of the model (e.g. trees.yaml)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides: train.lr=0.002")
    ap.add_argument("--pretrain", action="store_true", help="pretrain on the four scenes first")
    ap.add_argument("--model", type=Path, default=None, help="start from this model, no training")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=int, default=60, help="detections reviewed per round")
    ap.add_argument("--review-threshold", type=float, default=0.5)
    ap.add_argument("--ft-epochs", type=int, default=FT_EPOCHS, help="epochs of each fine-tune")
    ap.add_argument("--ft-set", nargs="*", default=[], help="extra overrides of the fine-tunes")
    ap.add_argument("--control", action="store_true", help="fine-tune without any review")
    ap.add_argument("--threshold", type=float, default=0.05, help="detections kept for AP")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the label split stays 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the runs in")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from geodetect.config import load_config
    from geodetect.inference import infer
    from geodetect.labels import read_vector, write_vector
    from geodetect.training import train

    overrides = _overrides(args.set, None)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_review_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}; load: {os.getloadavg()[0]:.1f}", flush=True)
    data = fetch()
    real = build(data, work / "real")
    y = real["yell"]
    crowns = train_crowns(data, y["train"])
    t0 = time.perf_counter()
    if args.model:
        model = args.model
    else:
        config = load_config(args.config, overrides)
        if args.pretrain:
            from geodetect.pretraining import pretrain

            scenes = [str(y["train"])] + [str(c["image"]) for c in real.values()]
            bb = pretrain(scenes, work / "backbone.pt", config=config, device=args.device)
            config = load_config(args.config, {**overrides, "model.pretrained": str(bb)})
        model = train([str(y["train"])], str(y["labels"]), config=config, out_dir=work / "base",
                      device=args.device, seed=args.seed)  # fmt: skip
    secs = time.perf_counter() - t0
    session = session_for(y["train"], y["labels"])
    arm = "control: no review" if args.control else f"budget {args.budget}"
    print(f"{len(crowns)} annotated crowns in the training part; {arm}; base model {model}")
    print(HEADER)
    n = session.counts()
    m = evaluate_all(model, real, work, args.threshold, args.device)
    print(row(0, {}, sum(n["positives"].values()), n["negatives"], secs, m), flush=True)
    ft_config = load_config(
        args.config, {**overrides, "train.epochs": args.ft_epochs, **_overrides(args.ft_set, None)}
    )
    results = [{"round": 0, "model": str(model), "metrics": m}]
    for rnd in range(1, args.rounds + 1):
        out = work / f"round{rnd}"
        out.mkdir(exist_ok=True)
        counts: dict = {}
        if not args.control:
            dets = out / "detections.gpkg"  # the dock's detect job: infer at the tab's threshold
            infer(model, [str(y["train"])], out=dets, device=args.device,
                  threshold=min(DETECT_THRESHOLD, args.review_threshold))  # fmt: skip
            counts = review(session, read_vector(dets), crowns, args.review_threshold, args.budget)
        labels = write_vector(session.labels_frame(), out / "labels.gpkg")  # as save_labels
        t0 = time.perf_counter()
        model = train([str(y["train"])], str(labels), config=ft_config, out_dir=out,
                      device=args.device, seed=args.seed, init=model)  # fmt: skip
        secs = time.perf_counter() - t0
        m = evaluate_all(model, real, out, args.threshold, args.device)
        n = session.counts()
        print(row(rnd, counts, sum(n["positives"].values()), n["negatives"], secs, m), flush=True)
        results.append({"round": rnd, "model": str(model), "review": counts, "metrics": m})
    extra = [(r["round"], r["review"]) for r in results[1:] if r.get("review")]
    for rnd, c in extra:
        print(f"round {rnd}: passed over {c['passed']} on a positive; skipped {c['on_label']} "
              "on a labelled crown, the rest ambiguous; "
              f"{c['merged']} accepts merged into a positive (counted as skipped); "
              f"{c['rej_on_crown']} rejected boxes lie half inside a crown")  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
