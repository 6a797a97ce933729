"""Detection of one task or one scene: tiles -> batches -> network -> decode -> merge.

`run_task` turns one planned task (`tiling.Task`) into a map-frame detections frame; the
tasks of a scene are fused by `merge_in_scene_crs`. `detect` does both for one scene in
memory, and `inference.infer` runs the same `run_task` as the engine's runner and the same
merge over its part files, so the two give the same detections. Nothing holds a whole scene:
a task reads its tiles one batch at a time (the next batch is read in a background thread
while the network runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from rasterio.windows import Window

from geodetect import geometry
from geodetect import tta as tta_passes
from geodetect.aoi import OutsideError, keep_inside, load_area
from geodetect.decoding import decode_arrays
from geodetect.errors import GeodetectError, InputError, ModelError, is_out_of_memory
from geodetect.merge import empty_detections, merge_detections
from geodetect.modelinfo import ModelInfo
from geodetect.mosaic import name_by_source
from geodetect.remote import display_name
from geodetect.tiling import Settings, Task, plan_tasks, resolve_settings

SEAM_SLACK_PX = 2.0  # cores of adjacent tiles overlap by this much; NMS removes the duplicates
PRECISIONS = ("fp32", "bf16")


@dataclass
class Detector:
    """A loaded model and what it needs to run.

    `net` maps an NCHW float32 array to the head outputs as arrays: `torchrun.TorchNet` for a
    model.pt, `onnxrun.OnnxNet` for an exported .onnx (which never imports torch).
    """

    net: Callable[[np.ndarray], dict[str, np.ndarray]]
    info: ModelInfo
    device: Any  # torch.device for a .pt; "cpu"/"cuda" for an .onnx
    batch_size: int  # current batch size; halves on out-of-memory


def load_detector(
    model: str | Path, device: str | Any | None = "auto", precision: str = "fp32"
) -> Detector:
    """Load a model file (.pt, or an exported .onnx run by ONNX Runtime) on a device.

    A torch network is prepared once for inference (BatchNorm folded into the convs,
    channels_last on CPU); `precision="bf16"` runs it under CPU bfloat16 autocast.
    DeviceError / ModelError for bad input.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    if Path(model).suffix.lower() == ".onnx" and Path(model).is_file():
        from geodetect.onnxrun import load_onnx

        if precision != "fp32":
            raise InputError("--precision applies to .pt models; an .onnx runs as exported")
        net, info = load_onnx(model, None if device is None else str(device))
        kind = "cuda" if net.session.get_providers()[0].startswith("CUDA") else "cpu"
        return Detector(net, info, kind, 1)
    from geodetect.device import resolve_device
    from geodetect.torchrun import load_torch

    dev = resolve_device(device)
    if not Path(model).is_file():
        raise ModelError(f"{model}: model file not found")
    net, info = load_torch(model, dev, precision)
    return Detector(net, info, dev, 1)


_DETECTORS: dict[tuple[str, str, str, str], Detector] = {}  # per process: loaded once
LOADS = {"count": 0}  # models loaded in this process (tests check "once per worker")


def cached_detector(
    model: str,
    model_hash: str,
    device: str | None,
    precision: str = "fp32",
    batch_size: int = 1,
    loaded: Detector | None = None,
) -> Detector:
    """The detector for a model file in this process, loaded on first use (`loaded`: one
    the caller already has, kept for the tasks run here). Each Dask worker loads once."""
    key = (model, model_hash, str(device), precision)
    if loaded is not None:
        _DETECTORS[key] = loaded
    if key not in _DETECTORS:
        det = load_detector(model, device, precision)
        det.batch_size = batch_size
        _DETECTORS[key] = det
        LOADS["count"] += 1
    return _DETECTORS[key]


# ------------------------------------------------------------------------------ reading


def read_batches(task: Task, info: ModelInfo, size: int) -> Iterator[tuple]:
    """Yield (inputs NCHW float32, offsets) per batch of `size`; all-nodata tiles skipped.

    Tiles are normalised exactly as in training (also the calibration chips of an int8
    export)."""
    from geodetect.raster import SceneReader
    from geodetect.transforms import prepare_input

    ndsm_block, block_origin = _ndsm_block(task, task.tile)
    stats = task.stats or info.model_stats
    scale = info.elevation_scale if info.elevation else None
    tile = task.tile
    with SceneReader(task.image, task.grid, bands=list(info.bands)) as reader:
        inputs: list[np.ndarray] = []
        offs: list[tuple[int, int]] = []
        for col, row in task.windows:
            data, valid = reader.read(Window(col, row, tile, tile))
            if not valid.any():
                continue
            ndsm = None
            if ndsm_block is not None:
                r0, c0 = row - block_origin[1], col - block_origin[0]
                ndsm = np.ascontiguousarray(ndsm_block[r0 : r0 + tile, c0 : c0 + tile])
            inputs.append(prepare_input(data, valid, ndsm, stats, scale))
            offs.append((col, row))
            if len(inputs) == size:
                yield _batch(inputs), offs
                inputs, offs = [], []
        if inputs:
            yield _batch(inputs), offs


def _batch(inputs: list[np.ndarray]) -> np.ndarray:
    """NCHW from (C, H, W) inputs; one input is a view, not a 12 MB copy per 1024² tile."""
    return inputs[0][None] if len(inputs) == 1 else np.stack(inputs)


def _ndsm_block(task: Task, tile: int) -> tuple[np.ndarray | None, tuple[int, int]]:
    """The nDSM under a task's tiles, rasterised once per task (bounded by TASK_ROWS_PX)."""
    if task.pointcloud is None or not task.windows:
        return None, (0, 0)
    from geodetect.pointcloud import rasterize_cloud

    c0 = min(c for c, _ in task.windows)
    r0 = min(r for _, r in task.windows)
    c1 = max(c for c, _ in task.windows) + tile
    r1 = max(r for _, r in task.windows) + tile
    sub = task.grid.window_grid(Window(c0, r0, c1 - c0, r1 - r0))
    return rasterize_cloud(task.pointcloud, sub, kind="ndsm"), (c0, r0)


# ------------------------------------------------------------------------------ running


def _core(off: int, tile: int, size: int, overlap: int) -> tuple[float, float]:
    """Span of centres a tile keeps along one axis: all but the overlap margin, except at
    the scene edge, so an object on a seam comes from the tile that holds it whole."""
    margin = max(0.0, overlap / 2 - SEAM_SLACK_PX)
    lo = -math.inf if off <= 0 else off + margin
    hi = math.inf if off + tile >= size else off + tile - margin
    return lo, hi


def _forward(det: Detector, batch: np.ndarray, settings: Settings) -> list[dict]:
    """Decoded detections per image, tile pixel frame; the TTA passes and an ensemble's
    members (each pass of each member one "pass" of the fusion) fused when there are several.

    An ensemble's output holds its members' outputs member-major along the batch; each
    member's sizes take its own calibration (`member_size_scale`) before the fusion.
    """
    passes = tta_passes.PASSES if settings.tta else ((0, False),)
    members = det.info.members
    fused = len(passes) * members > 1
    thr = settings.threshold * 0.5 if fused else settings.threshold
    n = batch.shape[0]
    per_image: list[list[dict]] = [[] for _ in range(n)]
    size = (batch.shape[2], batch.shape[3])
    front = list(det.info.has_front)
    for p, (k, flip) in enumerate(passes):
        out = det.net(tta_passes.augment(batch, k, flip))
        for j, d in enumerate(decode_arrays(out, thr, front, settings.max_det)):
            member, i = divmod(j, n)
            if not fused:
                per_image[i].append(d)
                continue
            boxes, heads = tta_passes.unaugment(d["boxes"], d["headings"], size, k, flip)
            scale = _member_scale(det.info, member)
            if scale is not None:
                boxes[:, 2:4] *= scale[np.asarray(d["classes"], np.int64), None]
            pass_id = member * len(passes) + p
            per_image[i].append({**d, "boxes": boxes, "headings": heads, "pass": pass_id})
    if not fused:
        return [dets[0] for dets in per_image]
    n_passes = len(passes) * members
    return [
        tta_passes.fuse(dets, n_passes, settings.nms_iou, settings.threshold) for dets in per_image
    ]


def _member_scale(info: ModelInfo, member: int) -> np.ndarray | None:
    """Per-class size factors of one ensemble member (None: a single network, or no factors)."""
    if info.members == 1 or member >= len(info.member_size_scale):
        return None
    return np.asarray(info.member_size_scale[member], np.float64)


def _run_batch(det: Detector, inputs: np.ndarray, settings: Settings) -> list[dict]:
    """Forward a batch in chunks of det.batch_size, halving it on out-of-memory."""
    results: list[dict] = []
    start = 0
    while start < len(inputs):
        chunk = inputs[start : start + det.batch_size]
        try:
            results.extend(_forward(det, chunk, settings))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if not isinstance(det.device, str):
                from geodetect.device import empty_cache

                empty_cache(det.device)
            if det.batch_size == 1:
                raise GeodetectError(
                    f"out of memory on {det.device} even with batch 1; use a smaller --tile"
                ) from None
            det.batch_size = max(1, det.batch_size // 2)
            continue
        start += len(chunk)
    return results


def run_task(
    task: Task, det: Detector, settings: Settings, on_tile: Callable[[], None] | None = None
) -> gpd.GeoDataFrame:
    """Detections of one task as a map-frame frame (contract schema, the grid's CRS)."""
    from geodetect.boxes import detections_frame

    g = task.grid
    tile = task.tile
    boxes, scores, classes, heads = [], [], [], []
    n_valid = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        batches = read_batches(task, det.info, max(det.batch_size, settings.batch_size))
        pending = pool.submit(next, batches, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, batches, None)  # read the next batch while this one runs
            inputs, offs = item
            n_valid += len(offs)
            for d, (col, row) in zip(_run_batch(det, inputs, settings), offs, strict=True):
                b = np.asarray(d["boxes"], np.float64).reshape(-1, 5).copy()
                b[:, 0] += col
                b[:, 1] += row
                xlo, xhi = _core(col, tile, g.width, settings.overlap)
                ylo, yhi = _core(row, tile, g.height, settings.overlap)
                keep = (b[:, 0] >= xlo) & (b[:, 0] < xhi) & (b[:, 1] >= ylo) & (b[:, 1] < yhi)
                keep &= (b[:, 0] >= 0) & (b[:, 0] < g.width) & (b[:, 1] >= 0) & (b[:, 1] < g.height)
                boxes.append(b[keep])
                scores.append(np.asarray(d["scores"], np.float64).reshape(-1)[keep])
                classes.append(np.asarray(d["classes"], np.int64).reshape(-1)[keep])
                heads.append(np.asarray(d["headings"], np.float64).reshape(-1)[keep])
                if on_tile:
                    on_tile()
    name = display_name(task.image)
    if not boxes or sum(len(b) for b in boxes) == 0:
        frame = empty_detections(g.crs)
    else:
        b, s, c, h = (np.concatenate(x) for x in (boxes, scores, classes, heads))
        b[:, 2:4] *= np.asarray(det.info.size_scale, np.float64)[c, None]  # calibrated sizes
        upright = np.asarray(det.info.orientation_free, bool)[c]
        b[upright] = geometry.snap_upright(b[upright])  # classes without orientation: axis-aligned
        keep = np.sort(
            np.asarray(geometry.rotated_nms(b, s, settings.nms_iou, classes=c), np.int64)
        )
        names = [det.info.classes[i] for i in c[keep]]
        frame = detections_frame(b[keep], s[keep], names, h[keep], g, name)
        frame.loc[upright[keep], "angle_deg"] = 0.0  # no orientation (contract)
    frame = keep_inside(frame, task.aoi)
    if task.sources:
        name_by_source(frame, task.sources)
    frame.attrs["scene"] = task.group or task.image  # merge key: the full path, not the name
    frame.attrs["valid_tiles"] = n_valid  # a scene with none at all is an input error
    return frame


# ------------------------------------------------------------------------------ merging


def check_some_valid(tasks: Sequence[Task], frames: Sequence[gpd.GeoDataFrame]) -> None:
    """A scene whose every tile was nodata is an input error, not an empty result."""
    valid: dict[str, int] = {}
    for task, frame in zip(tasks, frames, strict=True):
        valid[task.image] = valid.get(task.image, 0) + int(frame.attrs.get("valid_tiles", 1))
    for image, n in valid.items():
        if n == 0:
            raise InputError(f"{image}: has no valid pixels (all nodata); nothing to detect")


def scene_crs(tasks: Sequence[Task]) -> Any:
    """The first scene's own CRS: what detections are given in (the contract)."""
    from geodetect.raster import open_raster

    return open_raster(tasks[0].image).grid.crs if tasks else None


def merge_in_scene_crs(
    frames: list[gpd.GeoDataFrame], *, nms_iou: float, crs: Any, out_crs: Any
) -> gpd.GeoDataFrame:
    """Merge in the metric working CRS `crs`, then move to the scene's `out_crs` when it
    differs (a geographic scene is processed in its UTM zone); angles and headings are turned
    by the meridian convergence (`geodetect.north`), lengths stay in metres."""
    from geodetect.north import reproject_detections

    gdf = merge_detections(frames, nms_iou=nms_iou, crs=crs)
    if out_crs is None or crs is None or gdf.crs is None:
        return gdf
    return reproject_detections(gdf, out_crs)


def detect(
    model: str | Path | Detector,
    scene: str | Path,
    clouds: str | Path | Sequence[str | Path] | None = None,
    region: Any = None,
    *,
    device: str | None = "auto",
    precision: str = "fp32",
    **settings: Any,
) -> gpd.GeoDataFrame:
    """Detections of one scene, in memory and in the scene's CRS: what `infer` writes for it.

    `model`: a model file (.pt or .onnx) or a `Detector` from `load_detector` (load once,
    detect many). `clouds`: the scene's point cloud (a path, or a list of one) for a model
    with elevation. `region`: an area of interest, as `infer(aoi=...)` takes it
    (`OutsideError` when it misses the scene). `settings`: `tile`, `overlap`, `batch_size`,
    `threshold`, `nms_iou`, `tta`; None or absent takes the model's saved value.
    """
    det = model if isinstance(model, Detector) else load_detector(model, device, precision)
    chosen = resolve_settings(det.info, **settings)
    det.batch_size = chosen.batch_size
    area = load_area(region)
    if clouds is not None and isinstance(clouds, (str, Path)):
        clouds = [clouds]
    tasks = plan_tasks([str(scene)], list(clouds or []) or None, det.info, chosen, aoi=area)
    if not tasks:  # only an area can leave a scene without tiles
        where = area.source if area is not None else "region"
        raise OutsideError(f"{where}: does not overlap {scene}; nothing to detect")
    frames = [run_task(t, det, chosen) for t in tasks]
    check_some_valid(tasks, frames)
    return merge_in_scene_crs(
        frames, nms_iou=chosen.nms_iou, crs=tasks[0].grid.crs, out_crs=scene_crs(tasks)
    )
