"""`geodetect infer`: windows -> batches -> decode -> merge -> detections file.

Structured for scale-out: `plan_tasks` cuts every scene into tasks (a block of tile rows),
`run_task` turns one task into a map-frame detections frame, `merge_detections` fuses tasks,
`write_detections` writes atomically. Nothing holds a whole scene: a task reads its tiles one
batch at a time (the next batch is read in a background thread while the network runs).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from rasterio.windows import Window

from geodetect import geometry
from geodetect import tta as tta_passes
from geodetect.aoi import OutsideError, clip_task, in_crs, keep_inside, load_area
from geodetect.atomic import check_out_dir
from geodetect.config import Config, InferConfig
from geodetect.decoding import decode_arrays
from geodetect.errors import CRSError, GeodetectError, InputError, ModelError
from geodetect.merge import empty_detections, merge_detections  # noqa: F401 - re-exported
from geodetect.mosaic import name_by_source
from geodetect.raster import Grid
from geodetect.remote import display_name

VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb"}
TASK_ROWS_PX = 4096  # height of a task's block of tile rows
TASK_MAX_PX = 64_000_000  # and its area: bounds the per-task nDSM (float32) to ~256 MB
SEAM_SLACK_PX = 2.0  # cores of adjacent tiles overlap by this much; NMS removes the duplicates
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Settings:
    """Resolved inference parameters (config from the model file, then explicit overrides)."""

    tile: int
    overlap: int
    batch_size: int
    threshold: float
    nms_iou: float
    tta: bool
    max_det: int = 500


@dataclass(frozen=True)
class Task:
    """A block of tile rows of one scene; picklable, so a scheduler can ship it to a worker."""

    image: str
    pointcloud: str | None
    grid: Grid  # working grid at the model GSD
    windows: tuple[tuple[int, int], ...]  # (col_off, row_off) of tiles of side `tile`
    stats: dict | None  # scene colour statistics (None: the model's)
    tile: int = 512  # tile side actually read (a scene smaller than the tile gets one tile)
    index: int = 0
    n_tasks: int = 1
    aoi: Any = None  # area of interest in the grid's CRS: detections kept by centre (aoi.py)
    group: str | None = None  # merge key when not the scene (a mosaic of files in many CRSs)
    sources: tuple | None = None  # a mosaic VRT's files, to name detections (mosaic.py)


@dataclass
class Detector:
    """A loaded model and what it needs to run.

    `net` maps an NCHW float32 array to the head outputs as arrays: `torchrun.TorchNet` for a
    model.pt, `onnxrun.OnnxNet` for an exported .onnx (which never imports torch).
    """

    net: Callable[[np.ndarray], dict[str, np.ndarray]]
    meta: dict
    device: Any  # torch.device for a .pt; "cpu"/"cuda" for an .onnx
    batch_size: int  # current batch size; halves on out-of-memory
    has_front: list[bool] = field(default_factory=list)


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
        net, meta = load_onnx(model, None if device is None else str(device))
        kind = "cuda" if net.session.get_providers()[0].startswith("CUDA") else "cpu"
        return Detector(net, meta, kind, 1, list(meta.get("has_front", [])))
    from geodetect.device import resolve_device
    from geodetect.torchrun import load_torch

    dev = resolve_device(device)
    if not Path(model).is_file():
        raise ModelError(f"{model}: model file not found")
    net, meta = load_torch(model, dev, precision)
    return Detector(net, meta, dev, 1, list(meta.get("has_front", [])))


def resolve_settings(meta: dict, **overrides: Any) -> Settings:
    """InferConfig saved in the model file, with the non-None overrides applied and checked."""
    try:
        base = Config.model_validate(meta.get("config") or {}).infer
    except Exception:  # an older or foreign config section: fall back to the defaults
        base = InferConfig()
    values = base.model_dump()
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = InferConfig.model_validate(values)
    except Exception as exc:
        raise InputError(f"infer settings: {str(exc).splitlines()[-2].strip()}") from None
    multiple = int(meta.get("arch", {}).get("multiple", 32))
    tile = int(math.ceil(cfg.tile / multiple) * multiple)
    if cfg.overlap >= tile // 2:
        raise InputError(f"--overlap {cfg.overlap} must be less than half the tile ({tile} px)")
    return Settings(tile, cfg.overlap, cfg.batch_size, cfg.threshold, cfg.nms_iou, cfg.tta)


# ------------------------------------------------------------------------------ planning


def _check_scene(image: str, meta: dict) -> Any:
    """Open a scene and check it can feed the model; returns its RasterInfo."""
    from geodetect.raster import open_raster

    info = open_raster(image)
    bands = list(meta.get("bands") or [1])
    if info.count < max(bands):
        raise ModelError(
            f"{image}: has {info.count} band(s) but the model reads bands {bands}; "
            "give a scene with the bands it was trained on"
        )
    return info


def _check_cloud(cloud: str, grid: Grid, image: str) -> None:
    """The cloud must overlap the scene, or the elevation channel would be empty."""
    from geodetect.pointcloud import open_cloud

    info = open_cloud(cloud)
    left, bottom, right, top = grid.bounds
    minx, miny, maxx, maxy = info.bounds
    if grid.crs is not None and info.crs is not None and info.crs != grid.crs:
        from pyproj import Transformer

        tr = Transformer.from_crs(info.crs, grid.crs, always_xy=True)
        minx, miny, maxx, maxy = tr.transform_bounds(minx, miny, maxx, maxy)
    if maxx <= left or minx >= right or maxy <= bottom or miny >= top:
        raise InputError(f"{cloud}: does not overlap {image}; give the point cloud of that scene")


def _scene_stats(image: str, meta: dict) -> dict | None:
    """Colour statistics of the scene when the model normalises per scene, else None."""
    from geodetect.transforms import scene_stats

    norm = meta.get("normalisation") or {}
    mode = norm.get("stats") or (meta.get("config") or {}).get("data", {}).get("stats", "scene")
    if mode != "scene":
        return None
    max_px = int((meta.get("config") or {}).get("data", {}).get("stats_pixels", 200_000))
    return scene_stats(image, list(meta.get("bands") or [1]), meta, max_px)


def plan_tasks(
    images: list[str | Path],
    pointclouds: list[str | Path] | None,
    meta: dict,
    settings: Settings,
    rows_px: int = TASK_ROWS_PX,
    aoi: Any = None,
) -> list[Task]:
    """Check every scene first (nothing is written on bad input), then cut each into tasks.

    With an area of interest (`geodetect.aoi`) only the tiles that meet it stay, and a scene
    with none is neither sampled for statistics nor run."""
    from geodetect.raster import tile_windows, working_grid

    if pointclouds and len(pointclouds) != len(images):
        raise InputError(
            f"--pointcloud: {len(pointclouds)} given for {len(images)} image(s); give one per IMAGE"
        )
    if meta.get("elevation") and not pointclouds:
        raise InputError("the model uses elevation: give --pointcloud LAS for every IMAGE")
    clouds = [str(p) for p in pointclouds] if (pointclouds and meta.get("elevation")) else None
    tasks: list[Task] = []
    area = load_area(aoi)
    for i, image in enumerate(map(str, images)):
        info = _check_scene(image, meta)
        grid = working_grid(info, gsd=float(meta["gsd"]))
        if tasks and (grid.crs is None) != (tasks[0].grid.crs is None):
            raise CRSError(
                f"{image}: {'has no CRS' if grid.crs is None else 'has a CRS'} unlike "
                f"{tasks[0].image}; scenes with and without a CRS need separate --out files"
            )
        if clouds:
            _check_cloud(clouds[i], grid, image)
        multiple = int(meta.get("arch", {}).get("multiple", 32))
        side = math.ceil(max(grid.width, grid.height) / multiple) * multiple
        tile = min(settings.tile, side)
        wins = tile_windows(grid.width, grid.height, tile, min(settings.overlap, tile // 2))
        offsets = sorted(
            {(int(w.col_off), int(w.row_off)) for w in wins}, key=lambda t: (t[1], t[0])
        )
        rows = sorted({r for _, r in offsets})
        step = max(1, tile - settings.overlap)
        per_task = max(1, min(rows_px // step, TASK_MAX_PX // (grid.width * step)))
        blocks = [rows[j : j + per_task] for j in range(0, len(rows), per_task)]
        cloud = clouds[i] if clouds else None
        mine = [
            Task(image, cloud, grid, tuple(o for o in offsets if b[0] <= o[1] <= b[-1]), None, tile)
            for b in blocks
        ]
        if area is not None:
            geom = in_crs(area, grid.crs)
            mine = [t for t in (clip_task(t, geom) for t in mine) if t.windows]
        if mine:
            stats = _scene_stats(image, meta)
            n = len(mine)
            tasks += [
                dataclasses.replace(t, stats=stats, index=j, n_tasks=n) for j, t in enumerate(mine)
            ]
    return tasks


# ------------------------------------------------------------------------------ running


def _core(off: int, tile: int, size: int, overlap: int) -> tuple[float, float]:
    """Span of centres a tile keeps along one axis: all but the overlap margin, except at
    the scene edge, so an object on a seam comes from the tile that holds it whole."""
    margin = max(0.0, overlap / 2 - SEAM_SLACK_PX)
    lo = -math.inf if off <= 0 else off + margin
    hi = math.inf if off + tile >= size else off + tile - margin
    return lo, hi


def _read_batches(task: Task, meta: dict, settings: Settings, size: int) -> Iterator[tuple]:
    """Yield (inputs NCHW float32, offsets) per batch; all-nodata tiles are skipped."""
    from geodetect.raster import SceneReader
    from geodetect.transforms import prepare_input

    bands = list(meta.get("bands") or [1])
    ndsm_block, block_origin = _ndsm_block(task, task.tile)
    tile = task.tile
    with SceneReader(task.image, task.grid, bands=bands) as reader:
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
            inputs.append(prepare_input(data, valid, ndsm, meta, task.stats))
            offs.append((col, row))
            if len(inputs) == size:
                yield np.stack(inputs), offs
                inputs, offs = [], []
        if inputs:
            yield np.stack(inputs), offs


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


def _forward(det: Detector, batch: np.ndarray, settings: Settings) -> list[dict]:
    """Decoded detections per image, tile pixel frame; TTA passes fused when asked."""
    passes = tta_passes.PASSES if settings.tta else ((0, False),)
    thr = settings.threshold * 0.5 if settings.tta else settings.threshold
    per_image: list[list[dict]] = [[] for _ in range(batch.shape[0])]
    size = (batch.shape[2], batch.shape[3])
    for p, (k, flip) in enumerate(passes):
        out = det.net(tta_passes.augment(batch, k, flip))
        for i, d in enumerate(decode_arrays(out, thr, det.has_front, settings.max_det)):
            if not settings.tta:
                per_image[i].append(d)
                continue
            boxes, heads = tta_passes.unaugment(d["boxes"], d["headings"], size, k, flip)
            per_image[i].append({**d, "boxes": boxes, "headings": heads, "pass": p})
    if not settings.tta:
        return [dets[0] for dets in per_image]
    return [
        tta_passes.fuse(dets, len(passes), settings.nms_iou, settings.threshold)
        for dets in per_image
    ]


def _run_batch(det: Detector, inputs: np.ndarray, settings: Settings) -> list[dict]:
    """Forward a batch in chunks of det.batch_size, halving it on out-of-memory."""
    results: list[dict] = []
    start = 0
    while start < len(inputs):
        chunk = inputs[start : start + det.batch_size]
        try:
            results.extend(_forward(det, chunk, settings))
        except Exception as exc:
            if not _is_oom(exc):
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


def _is_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch's, or ONNX Runtime's allocation failure)."""
    if "torch" in sys.modules:
        from geodetect.device import is_oom

        if is_oom(exc):
            return True
    return "out of memory" in str(exc).lower() or "failed to allocate" in str(exc).lower()


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
        batches = _read_batches(task, det.meta, settings, max(det.batch_size, settings.batch_size))
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
        flags = np.asarray(det.meta.get("orientation_free") or [False] * (int(c.max()) + 1), bool)
        upright = flags[c]
        b[upright] = geometry.snap_upright(b[upright])  # classes without orientation: axis-aligned
        keep = np.sort(
            np.asarray(geometry.rotated_nms(b, s, settings.nms_iou, classes=c), np.int64)
        )
        names = [det.meta["classes"][i] for i in c[keep]]
        frame = detections_frame(b[keep], s[keep], names, h[keep], g, name)
        frame.loc[upright[keep], "angle_deg"] = 0.0  # no orientation (contract)
    frame = keep_inside(frame, task.aoi)
    if task.sources:
        name_by_source(frame, task.sources)
    frame.attrs["scene"] = task.group or task.image  # merge key: the full path, not the name
    frame.attrs["valid_tiles"] = n_valid  # a scene with none at all is an input error
    return frame


# ------------------------------------------------------------------------------ entry point


def write_detections(gdf: gpd.GeoDataFrame, out: str | Path) -> Path:
    """Write the detections file atomically (driver by extension)."""
    from geodetect.labels import write_vector

    return Path(write_vector(gdf, out))


def infer(
    model: str | Path,
    images: list[str | Path],
    pointclouds: list[str | Path] | None = None,
    out: str | Path = "detections.gpkg",
    device: str | None = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    threshold: float | None = None,
    tta: bool | None = None,
    progress: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    shard: str | None = None,
    precision: str = "fp32",
    aoi: Any = None,
    mosaic: bool = False,
) -> Path:
    """`geodetect infer`: detect objects over whole scenes into one detections file.

    None arguments take the model's saved InferConfig. Several scenes go into one file (in
    the first scene's CRS); every input is checked before any work, and the file appears only
    when complete. Tasks run through `geodetect.scaleout` (part files + resume manifest):
    `workers` / `scheduler` pick a Dask engine, `resume` reuses finished tasks, `shard="i/N"`
    runs one shard (see docs/scaleout.md). `model` may be an exported `.onnx` (ONNX
    Runtime); `precision="bf16"` runs a .pt under CPU bfloat16 autocast.
    `aoi` (a vector file in any CRS, a GeoDataFrame, or {"bounds", "crs"}): only tiles that
    meet it are read, only detections centred in it kept. `mosaic=True`: the scenes are one
    surface (a VRT), so an object across a file edge is found once.
    """
    out = check_out_dir(out)
    if out.suffix.lower() not in VECTOR_SUFFIXES:
        raise InputError(f"{out}: unknown vector format; use one of {sorted(VECTOR_SUFFIXES)}")
    from geodetect.manifest import parse_shard
    from geodetect.scaleout import check_outputs, check_scheduler, run_inference

    parse_shard(shard)  # a bad --shard fails before any work
    check_scheduler(scheduler)
    aoi_file = [aoi] if isinstance(aoi, (str, Path)) else []
    check_outputs(out, shard, [model, *images, *(pointclouds or []), *aoi_file])
    area = load_area(aoi)  # a bad area fails before the model loads
    remote = bool(workers or scheduler)  # the workers resolve `device`; here only the meta
    det = load_detector(model, "cpu" if remote else device, precision)
    settings = resolve_settings(
        det.meta, tile=tile, overlap=overlap, batch_size=batch_size, threshold=threshold, tta=tta
    )
    det.batch_size = settings.batch_size
    tasks = plan_surface(
        [str(i) for i in images], pointclouds, det.meta, settings, out, mosaic, area
    )
    if not tasks and area is not None:
        raise OutsideError(f"--aoi {area.source}: does not overlap any scene; nothing to detect")
    return run_inference(
        tasks,
        det,
        settings,
        model=model,
        out=out,
        device=device,
        workers=workers,
        scheduler=scheduler,
        resume=resume,
        shard=shard,
        progress=progress,
    )


def plan_surface(
    images: list[str],
    pointclouds: list[str | Path] | None,
    meta: dict,
    settings: Settings,
    out: Path,
    mosaic: bool = False,
    aoi: Any = None,
) -> list[Task]:
    """`plan_tasks`, or with `mosaic` the tasks of the scenes as one surface (mosaic.py)."""
    if not mosaic:
        return plan_tasks(images, pointclouds, meta, settings, aoi=aoi)
    from geodetect.mosaic import plan
    from geodetect.scaleout import parts_dir

    if pointclouds:
        raise InputError("--mosaic reads scenes only; run models with elevation scene by scene")
    for image in images:
        _check_scene(image, meta)  # band and file errors name the file, not the VRT
    surface = plan(images, parts_dir(out))
    tasks = plan_tasks(surface.images, None, meta, settings, aoi=aoi)
    return [dataclasses.replace(t, group=surface.group, sources=surface.sources) for t in tasks]


def _check_some_valid(tasks: list[Task], frames: list[gpd.GeoDataFrame]) -> None:
    """A scene whose every tile was nodata is an input error, not an empty result."""
    valid: dict[str, int] = {}
    for task, frame in zip(tasks, frames, strict=True):
        valid[task.image] = valid.get(task.image, 0) + int(frame.attrs.get("valid_tiles", 1))
    for image, n in valid.items():
        if n == 0:
            raise InputError(f"{image}: has no valid pixels (all nodata); nothing to detect")


def run_tasks(
    tasks: list[Task], det: Detector, settings: Settings, progress: bool = False
) -> list[gpd.GeoDataFrame]:
    """Run tasks in order with one progress bar in scene megapixels (rate and ETA)."""
    from tqdm import tqdm

    scene_px = {t.image: t.grid.width * t.grid.height for t in tasks}
    n_tiles = {img: sum(len(t.windows) for t in tasks if t.image == img) for img in scene_px}
    total = float(sum(scene_px.values()))
    frames = []
    with tqdm(total=total, unit="px", unit_scale=True, disable=not progress, desc="infer") as bar:
        for task in tasks:
            step = scene_px[task.image] / max(1, n_tiles[task.image])
            done = 0

            def tick(step: float = step) -> None:
                nonlocal done
                done += 1
                bar.update(step)

            frames.append(run_task(task, det, settings, on_tile=tick))
            bar.update(step * (len(task.windows) - done))  # skipped all-nodata tiles
    return frames
