"""`geodetect train`: positives and negatives -> a rotation-aware detector in `DIR/model.pt`.

The loop is plain PyTorch: AdamW with a one-cycle schedule over `epochs` x `chips_per_epoch`
random chips, masked focal + regression loss, validation on held-out labels after every
epoch, a checkpoint after every epoch (atomic), and the final model file. Every random draw
is a function of (seed, epoch, chip index, rank), so a resumed run equals an uninterrupted
one and `torchrun` ranks draw different chips.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geodetect import ddp, transforms
from geodetect.atomic import atomic_path
from geodetect.config import Config, dump_config
from geodetect.device import autocast, empty_cache, is_oom, resolve_device, use_amp
from geodetect.errors import GeodetectError, InputError
from geodetect.model import build_model, decode, detection_loss, load_model, make_arch, model_blob
from geodetect.modelfile import load_file
from geodetect.project import Project, load_project, split_validation
from geodetect.resume import check_resume, run_identity
from geodetect.samples import Patch, extract_patches, make_chip, paste_positives
from geodetect.sidebyside import member_processes, run_members

CHECKPOINT = "checkpoint.pt"
VAL_THRESHOLD = 0.05


class ChipSet(torch.utils.data.Dataset):
    """`chips_per_epoch` random chips per epoch, each a pure function of its seed tuple."""

    def __init__(self, project: Project, pos: list[Patch], neg: list[Patch], seed: int, rank: int):
        self.project, self.pos, self.neg = project, pos, neg
        self.cfg = project.config.train
        self.seed, self.rank, self.epoch = seed, rank, 0
        self.by_class = [
            [i for i, p in enumerate(pos) if p.focus_class == k]
            for k in range(len(project.classes))
        ]
        self.by_class = [c for c in self.by_class if c]
        self.neg_weights = np.ones(len(neg))
        self.length = self.cfg.chips_per_epoch

    def __len__(self) -> int:
        return self.length

    def pick(self, rng: np.random.Generator) -> tuple[int, Patch]:
        """A negative (hard ones more often) or a positive of a uniformly drawn class."""
        if self.neg and (not self.by_class or rng.random() < self.cfg.negative_fraction):
            w = self.neg_weights / self.neg_weights.sum()
            i = int(rng.choice(len(self.neg), p=w))
            return i, self.neg[i]
        return -1, self.pick_positive(rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index, self.rank])
        neg_index, patch = self.pick(rng)
        if neg_index >= 0 and self.cfg.paste > 0 and self.pos:
            patch = self._pasted(patch, index)
        chip = self.project.chip
        params = transforms.draw_params(rng, self.cfg, max_shift=0.25 * chip)
        item = make_chip(
            patch,
            params,
            chip,
            len(self.project.classes),
            len(self.project.bands),
            self.project.upright,
        )
        item["neg_index"] = neg_index
        return item

    def _pasted(self, patch: Patch, index: int) -> Patch:
        """With probability `train.paste`, the negative patch with 1-3 positives pasted in
        (its own random stream: recipes without pasting keep theirs)."""
        rng = np.random.default_rng([self.seed, self.epoch, index, self.rank, 1])
        if rng.random() >= self.cfg.paste:
            return patch
        picks = [self.pick_positive(rng) for _ in range(int(rng.integers(1, 4)))]
        return paste_positives(patch, picks, rng, rows=self.cfg.paste_rows)

    def pick_positive(self, rng: np.random.Generator) -> Patch:
        """A positive patch of a uniformly drawn class."""
        members = self.by_class[int(rng.integers(len(self.by_class)))]
        return self.pos[members[int(rng.integers(len(members)))]]


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.stack([it[k] for it in items])) for k in items[0]}


def _loader(
    data: ChipSet, batch_size: int, workers: int, world: int
) -> torch.utils.data.DataLoader:
    data.length = max(batch_size, math.ceil(data.cfg.chips_per_epoch / world))
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        drop_last=True,
        persistent_workers=False,
    )


# ------------------------------------------------------------------------------ validation


VAL_BATCH = 8  # validation views per forward; halved on out-of-memory


def _view_detections(
    net: torch.nn.Module,
    views: list[Patch],
    project: Project,
    dev: torch.device,
    tta: bool = False,
):
    """Detections on validation patches whose centre lies in a known, valid pixel (scene frame).

    `tta`: the passes of `infer.tta`, fused as inference fuses them. On CUDA out-of-memory the
    batch halves (per view the result is the same: eval mode); at one view a time it is a
    one-line error naming the setting that sizes a view."""
    out = []
    size, start = VAL_BATCH, 0
    while start < len(views):
        batch = views[start : start + size]
        x = np.stack([v.image.astype(np.float32) for v in batch])
        try:
            found = _val_decode(net, x, dev, project, tta)
        except Exception as exc:
            if not is_oom(exc):
                raise
            empty_cache(dev)
            if size == 1:
                raise GeodetectError(
                    f"out of memory on {dev} validating even one view at a time; lower "
                    "data.chip_size (a validation view is twice its side)"
                ) from None
            size = max(1, size // 2)
            continue
        start += len(batch)
        for v, d in zip(batch, found, strict=True):
            b = d["boxes"]
            col = np.clip(b[:, 0].astype(int), 0, v.known.shape[1] - 1)
            row = np.clip(b[:, 1].astype(int), 0, v.known.shape[0] - 1)
            keep = (v.known[row, col] > 0) & (v.valid[row, col] > 0)
            b = b[keep].copy()
            b[:, 0] += v.origin[0]
            b[:, 1] += v.origin[1]
            out.append((v.scene, b, d["scores"][keep], d["classes"][keep]))
    return out


def _val_decode(
    net: torch.nn.Module, x: np.ndarray, dev: torch.device, project: Project, tta: bool
) -> list[dict]:
    """Decoded detections per view (view pixel frame), one pass or the TTA passes fused."""
    from geodetect import tta as tta_passes

    passes = tta_passes.PASSES if tta else ((0, False),)
    per_view: list[list[dict]] = [[] for _ in range(len(x))]
    for p, (k, flip) in enumerate(passes):
        res = _val_forward(net, tta_passes.augment(x, k, flip), dev)
        dets = decode(res, VAL_THRESHOLD, project.has_front, upright=project.upright)
        for i, d in enumerate(dets):
            if tta:
                size = (x.shape[2], x.shape[3])
                boxes, heads = tta_passes.unaugment(d["boxes"], d["headings"], size, k, flip)
                d = {**d, "boxes": boxes, "headings": heads, "pass": p}
            per_view[i].append(d)
    if not tta:
        return [d[0] for d in per_view]
    nms = project.config.infer.nms_iou
    return [tta_passes.fuse(d, len(passes), nms, VAL_THRESHOLD) for d in per_view]


def _val_forward(net: torch.nn.Module, x: np.ndarray, dev: torch.device) -> dict:
    with torch.inference_mode(), autocast(dev):
        res = net(torch.as_tensor(x).to(dev))
    return {k: t.float() for k, t in res.items()}


def _class_detections(dets: list, k: int, s_idx: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) of class k on scene s_idx from all views, overlapping views' duplicates
    removed (rotated NMS at 0.5)."""
    from geodetect.geometry import rotated_nms

    parts = [(b[c == k], s[c == k]) for si, b, s, c in dets if si == s_idx]
    if not parts:
        return np.zeros((0, 5)), np.zeros(0)
    b = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    keep = np.asarray(rotated_nms(b, s, 0.5), np.int64) if len(b) else np.zeros(0, int)
    return b[keep], s[keep]


def eval_detections(
    net: torch.nn.Module,
    views: list[Patch],
    project: Project,
    dev: torch.device,
    tta: bool = False,
) -> list:
    """The validation views' detections, the network in eval mode for the pass; one pass
    feeds both `validate` and, after the last epoch, `size_calibration` (a second pass with
    the TTA passes when the model will infer with `infer.tta`)."""
    net.eval()
    dets = _view_detections(net, views, project, dev, tta)
    net.train()
    return dets


def validate(dets: list, project: Project) -> dict:
    """AP50 per class on held-out labels from `eval_detections`; detections in unknown areas
    are neither right nor wrong (labels are sparse)."""
    from geodetect.matching import class_metrics

    result: dict[str, float | None] = {}
    for k, name in enumerate(project.classes):
        pb, ps, pg, tb, tg = [], [], [], [], []
        for s_idx, scene in enumerate(project.scenes):
            b, s = _class_detections(dets, k, s_idx)
            pb.append(b)
            ps.append(s)
            pg += [s_idx] * len(b)
            truth = scene.boxes[scene.pos_val & (scene.classes == k)]
            tb.append(truth)
            tg += [s_idx] * len(truth)
        if not tg:
            result[name] = None
            continue
        m = class_metrics(
            np.concatenate(pb), np.concatenate(ps), np.concatenate(tb), 0.5,
            pred_groups=pg, truth_groups=tg,
        )  # fmt: skip
        result[name] = m["ap"]
    return result


SIZE_CALIBRATION_SCORE = 0.3  # detections this confident calibrate the size head
SIZE_CALIBRATION_PAIRS = 8  # fewer held-out matches: no calibration (factor 1)
SIZE_SCALE_LIMITS = (0.75, 1.33)


def size_calibration(dets: list, project: Project) -> list[float]:
    """Per class, the factor on detected lengths and widths that makes them match the
    held-out positives' (`matching.size_log_ratios` over `eval_detections` of the final
    network, geometric mean, clamped to SIZE_SCALE_LIMITS); 1.0 for a class with too few
    held-out matches.

    Why: a size head trained on a few dozen real objects regresses towards the mean size;
    on the NEON crowns detections were ~12 % small, which costs IoU on every big crown.
    """
    from geodetect.matching import size_log_ratios

    scales = []
    for k in range(len(project.classes)):
        logs = []
        for s_idx, scene in enumerate(project.scenes):
            b, s = _class_detections(dets, k, s_idx)
            truth = scene.boxes[scene.pos_val & (scene.classes == k)]
            logs.append(size_log_ratios(b[s >= SIZE_CALIBRATION_SCORE], truth))
        logs = np.concatenate(logs)
        if len(logs) < SIZE_CALIBRATION_PAIRS:
            scales.append(1.0)
            continue
        scales.append(float(np.clip(np.exp(logs.mean()), *SIZE_SCALE_LIMITS)))
    return scales


# ------------------------------------------------------------------------------ the loop


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(obj, tmp)


def _load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint cut by a crash: say so, do not guess
        raise InputError(
            f"{path}: unreadable checkpoint ({exc}); remove it to start over"
        ) from None


def _meta(
    project: Project,
    arch: dict,
    model_stats: dict,
    history: list,
    config: Config,
    size_scale: list[float],
) -> dict:
    last = history[-1] if history else {}
    return {
        "classes": list(project.classes),
        "has_front": [bool(f) for f in project.has_front],
        "orientation_free": [bool(f) for f in project.upright],
        "bands": [int(b) for b in project.bands],
        "elevation": bool(project.elevation),
        "gsd": float(project.gsd),
        "normalisation": {
            "method": "percentile",
            "stats": config.data.stats,
            "percentiles": [float(p) for p in config.data.percentiles],
            "model_stats": model_stats,
            "elevation_scale": float(config.data.elevation_scale),
        },
        "config": dump_config(config),
        "arch": arch,
        "size_scale": [float(f) for f in size_scale],  # per class, on detected sizes
        "metrics": {"val_ap50": last.get("val_ap50", {}), "loss": last.get("loss")},
    }


def train(
    images: list[str],
    labels: str,
    pointclouds: list[str] | None = None,
    config: Config | None = None,
    out_dir: str | Path = "run",
    device: str | torch.device | None = "auto",
    seed: int = 0,
    resume: bool = False,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    extend: bool = False,
    init: str | Path | None = None,
) -> Path:
    """Train a detector; returns the path of `out_dir/model.pt` (also writes metrics.json).

    `callback`, when given, is called after every step with {"epoch", "epochs", "step",
    "total_steps", "loss"}; an exception raised in it stops training (the last finished
    epoch's checkpoint stays, so `resume=True` continues). Under `torchrun` every rank trains
    on its own chips and rank 0 writes the files.

    `resume` continues only the same run (config, seed, labels, scenes: checked against the
    checkpoint); `extend=True` also lets it run to more epochs than it was planned for.

    `init` (a geodetect model file) warm-starts
    the network: its architecture and GSD are kept, classes are matched by name and new
    classes get fresh heads.
    """
    from geodetect.atomic import check_not_input

    config = config or Config()
    if init is not None:
        from geodetect.weights import fit_config_to

        config = fit_config_to(config, load_model(init)[1])  # a checked model file
    out = Path(out_dir)
    inputs = [*map(str, images), str(labels), *(pointclouds or []), config.model.pretrained, init]
    members = config.model.members if config.model.members > 1 else 0  # DIR/memberK of each
    dirs = [out, *(out / f"member{k + 1}" for k in range(members))]
    written = [d / name for d in dirs for name in ("model.pt", "metrics.json", CHECKPOINT)]
    check_not_input(written, inputs)
    dev = resolve_device(device)
    with ddp.distributed(dev) as (info, dev):
        if config.model.members > 1:
            return _train_members(
                images, labels, pointclouds, config, out, dev, seed, resume, progress, callback,
                info, extend, init,
            )  # fmt: skip
        return _train(
            images, labels, pointclouds, config, out, dev, seed, resume, progress, callback, info,
            extend=extend,
            init=init,
        )  # fmt: skip


def _train_members(
    images, labels, pointclouds, config, out, dev, seed, resume, progress, callback, info, extend,
    init,
) -> Path:  # fmt: skip
    """`model.members` networks, each a whole training run of its own in `DIR/memberK/` (seed
    + K - 1, so its own draws, validation split and size calibration; `--init` member K from
    the init model's member K), then `DIR/model.pt` holding them all as one Ensemble.

    Why apart: with few labels two runs of one recipe differ by several points of AP and err
    in different places; their fused boxes beat the members' mean (by +0.03 for three on the
    NEON crowns; README, "Real imagery"). A resume resumes each member. On a multi-core CPU
    the members train side by side (`train.member_processes`, sidebyside.py)."""
    n = config.model.members
    single = config.model.model_copy(update={"members": 1})
    single = config.model_copy(update={"model": single})
    jobs = [
        {
            "images": images,
            "labels": labels,
            "pointclouds": pointclouds,
            "config": single,
            "out": out / f"member{k + 1}",
            "seed": seed + k,
            "resume": resume,
            "extend": extend,
            "init": init,
            "init_member": k,
        }
        for k in range(n)
    ]
    processes = member_processes(config.train.member_processes, n, dev, info.world_size)
    if processes > 1:
        apart = [{**job, "dev": dev, "progress": False, "info": info} for job in jobs]
        paths = run_members(_train, apart, processes, callback, progress)
    else:
        paths = [
            _train(
                **job,
                dev=dev,
                progress=progress,
                callback=_member_callback(callback, k, n),
                info=info,
            )
            for k, job in enumerate(jobs)
        ]
    path = out / "model.pt"
    if info.is_main:
        blob = ensemble_blob([load_file(p) for p in paths], dump_config(config))
        _save(blob, path)
        runs = [json.loads((p.parent / "metrics.json").read_text()) for p in paths]
        summary = {k: v for k, v in runs[0].items() if k not in ("epochs", "size_scale")}
        summary["members"] = [{"dir": p.parent.name, **r} for p, r in zip(paths, runs, strict=True)]
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    ddp.barrier()
    return path


def ensemble_blob(blobs: list[dict], config: dict) -> dict:
    """One model file's dict from its members' (same classes, bands and network shape): the
    weights under `members.K.`, each member's size calibration kept for its own boxes."""
    first = blobs[0]
    n = len(blobs)
    classes = first["classes"]
    val: dict[str, float | None] = {}
    for c in classes:
        aps = [b["metrics"]["val_ap50"].get(c) for b in blobs]
        aps = [a for a in aps if a is not None]
        val[c] = float(np.mean(aps)) if aps else None
    return {
        **first,
        "state_dict": {
            f"members.{k}.{key}": v
            for k, b in enumerate(blobs)
            for key, v in b["state_dict"].items()
        },
        "arch": {**first["arch"], "members": n},
        "config": config,
        "size_scale": [1.0] * len(classes),  # applied per member, before the fusion
        "member_size_scale": [list(b["size_scale"]) for b in blobs],
        "metrics": {"val_ap50": val, "members": [b["metrics"] for b in blobs]},
    }


def _member_callback(
    callback: Callable[[dict], None] | None, k: int, n: int
) -> Callable[[dict], None] | None:
    """Progress of member k of n as steps of the whole run (a progress bar fills once)."""
    if callback is None:
        return None

    def report(event: dict) -> None:
        total = event["total_steps"]
        step = k * total + event["step"]
        callback({**event, "step": step, "total_steps": n * total, "member": k + 1, "members": n})

    return report


def _train(
    images,
    labels,
    pointclouds,
    config,
    out,
    dev,
    seed,
    resume,
    progress,
    callback,
    info,
    extend,
    init=None,
    init_member=0,
):
    identity = run_identity(list(map(str, images)), str(labels), pointclouds, config, seed, init)
    ckpt = _load_checkpoint(out / CHECKPOINT) if resume else None
    if ckpt is not None:  # before any work: a checkpoint of another run is refused
        check_resume(ckpt, identity, config.train.epochs, extend, out / CHECKPOINT)
    _seed_everything(seed)
    project = load_project([str(i) for i in images], str(labels), pointclouds, config)
    split_validation(project, config.train.val_fraction, seed)
    pos, neg = extract_patches(project, training=True, seed=seed)
    vpos, vneg = extract_patches(project, training=False, seed=seed)
    arch = make_arch(project.in_channels, len(project.classes), config.model)
    arch["pretrained"] = config.model.pretrained
    net = build_model(arch)  # a backbone file that does not fit fails here, before any output
    arch["pretrained"] = None
    if init is not None:
        from geodetect.weights import warm_start

        warm_start(net, init, project.classes, project.bands, init_member)
    try:
        net = net.to(dev)
    except Exception as exc:
        if not is_oom(exc):
            raise
        raise GeodetectError(
            f"out of memory on {dev} placing the model; lower model.width / model.depth "
            "(or model.preset: cpu), or use --device cpu"
        ) from None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ddp.barrier()
    tc = config.train
    data = ChipSet(project, pos, neg, seed, info.rank)
    loader = _loader(data, tc.batch_size, tc.workers, info.world_size)
    steps = len(loader)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tc.lr, total_steps=tc.epochs * steps, pct_start=0.15
    )
    amp = use_amp(dev, tc.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        data.neg_weights = ckpt["neg_weights"].numpy().astype(np.float64)
        history, start = list(ckpt["history"]), int(ckpt["epoch"])
        if int(ckpt["identity"].get("epochs", tc.epochs)) == tc.epochs:
            sched.load_state_dict(ckpt["scheduler"])
        else:  # --extend: the longer schedule, taken to where this run stands
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "step() before optimizer.step()"
                for _ in range(start * steps):
                    sched.step()
        if ckpt.get("scaler") and scaler.is_enabled():  # a CPU run saves an empty one
            scaler.load_state_dict(ckpt["scaler"])
    identity["epochs"] = tc.epochs
    model = ddp.wrap_model(net, dev)
    model_stats = transforms.mean_stats([s.stats for s in project.scenes])
    total = tc.epochs * steps
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=start * steps,
        disable=not (progress and info.is_main),
        desc="train",
        unit="step",
    )
    t0 = time.perf_counter()
    for epoch in range(start, tc.epochs):
        data.epoch = epoch
        model.train()
        losses, neg_loss, neg_count = [], np.zeros(len(neg)), np.zeros(len(neg))
        for step, batch in enumerate(loader):
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            try:
                loss, per_chip = _step(model, batch, opt, scaler, dev, tc.amp)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                empty_cache(dev)
                raise GeodetectError(
                    f"out of memory on {dev} with train.batch_size {tc.batch_size}; lower "
                    f"train.batch_size (e.g. {max(1, tc.batch_size // 2)}) or data.chip_size"
                    + ("; --resume continues from the last finished epoch" if epoch else "")
                ) from None
            sched.step()
            losses.append(float(loss.detach()))
            ni = batch["neg_index"].cpu().numpy()
            for i, v in zip(ni, per_chip.cpu().numpy(), strict=True):
                if i >= 0:
                    neg_loss[i] += v
                    neg_count[i] += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
            if callback is not None:
                callback(
                    {
                        "epoch": epoch + 1,
                        "epochs": tc.epochs,
                        "step": epoch * steps + step + 1,
                        "total_steps": total,
                        "loss": float(loss.detach()),
                    }
                )
        data.neg_weights = _hard_negative_weights(data.neg_weights, neg_loss, neg_count, tc, dev)
        dets = eval_detections(ddp.unwrap(model), vpos + vneg, project, dev) if vpos or vneg else []
        val = validate(dets, project) if vpos or vneg else {}
        aps = [v for v in val.values() if v is not None]
        record = {
            "epoch": epoch + 1,
            "loss": ddp.all_reduce_mean(float(np.mean(losses)) if losses else float("nan"), dev),
            "val_ap50": val,
            "val_mean_ap50": float(np.mean(aps)) if aps else None,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(record)
        bar.set_postfix(
            epoch=epoch + 1, loss=f"{record['loss']:.3f}", val_ap50=_fmt(record["val_mean_ap50"])
        )
        if info.is_main:
            _save(
                {
                    "model": ddp.unwrap(model).state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "identity": identity,
                    "neg_weights": torch.as_tensor(data.neg_weights),
                    "history": history,
                    "epoch": epoch + 1,
                },
                out / CHECKPOINT,
            )
        ddp.barrier()
    bar.close()
    size_scale = [1.0] * len(project.classes)
    if vpos:  # the last epoch's pass, or (a resume with no epoch left, or TTA) a new one
        tta = bool(config.infer.tta)  # calibrate the boxes inference will write
        if start >= tc.epochs or tta:
            dets = eval_detections(ddp.unwrap(model), vpos + vneg, project, dev, tta)
        size_scale = size_calibration(dets, project)
    meta = _meta(project, arch, model_stats, history, config, size_scale)
    path = out / "model.pt"
    if info.is_main:
        _save(model_blob(ddp.unwrap(model), meta), path)
        summary = {
            "classes": project.classes,
            "gsd": project.gsd,
            "bands": project.bands,
            "elevation": project.elevation,
            "train_positives": len(pos),
            "train_negative_patches": len(neg),
            "val_views": len(vpos) + len(vneg),
            "size_scale": dict(zip(project.classes, size_scale, strict=True)),
            "epochs": history,
            "init": str(init) if init is not None else None,  # warm start's provenance
        }
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    ddp.barrier()
    return path


def _step(model, batch, opt, scaler, dev, amp) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """One optimiser step (forward, scaled backward, step); (loss, per-chip loss)."""
    with autocast(dev, amp):
        outputs = model(batch["image"])
    loss, _parts, per_chip = detection_loss(outputs, batch)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss, per_chip


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _hard_negative_weights(
    old: np.ndarray, loss: np.ndarray, count: np.ndarray, cfg: Any, device: torch.device
) -> np.ndarray:
    """Negatives the network still fires on (high background loss) are drawn up to
    `hard_negative_weight` times as often; unseen ones keep their weight."""
    t_loss = ddp.all_reduce_sum(torch.as_tensor(loss), device)
    t_count = ddp.all_reduce_sum(torch.as_tensor(count), device)
    loss, count = t_loss.numpy(), t_count.numpy()
    if len(old) == 0 or not (count > 0).any():
        return old
    mean = np.where(count > 0, loss / np.maximum(count, 1), np.nan)
    top = np.nanmax(mean)
    if not top > 0:
        return old
    fresh = 1.0 + (cfg.hard_negative_weight - 1.0) * np.nan_to_num(mean / top, nan=0.0)
    return np.where(count > 0, 0.5 * old + 0.5 * fresh, old)
