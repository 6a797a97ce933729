"""`geodetect infer`: many scenes -> one detections file, resumable and scalable.

The glue between detection and the task engine: `infer` checks every input, plans the tasks
(`tiling`), keys them for the resume manifest (`infer_items`) and hands `geodetect.engine`
the runner (`detect_task`: `detection.run_task` on the process's cached detector), the merge
(`detection.merge_in_scene_crs`) and the check (`detection.check_some_valid`) — the same
three functions `detection.detect` runs for one scene in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import geopandas as gpd

from geodetect.aoi import OutsideError, load_area
from geodetect.atomic import check_out_dir
from geodetect.detection import (
    Detector,
    cached_detector,
    check_some_valid,
    load_detector,
    merge_in_scene_crs,
    run_task,
    scene_crs,
)
from geodetect.engine import WorkItem, check_outputs, check_scheduler, execute, parts_dir
from geodetect.errors import InputError
from geodetect.manifest import canonical_json, file_sha256, parse_shard, scene_checksum, task_key
from geodetect.modelinfo import ModelInfo
from geodetect.remote import display_name
from geodetect.tiling import Settings, Task, check_scene, plan_tasks, resolve_settings

VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb"}


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
    when complete. Tasks run through `geodetect.engine` (part files + resume manifest):
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
    parse_shard(shard)  # a bad --shard fails before any work
    check_scheduler(scheduler)
    aoi_file = [aoi] if isinstance(aoi, (str, Path)) else []
    check_outputs(out, shard, [model, *images, *(pointclouds or []), *aoi_file])
    area = load_area(aoi)  # a bad area fails before the model loads
    remote = bool(workers or scheduler)  # the workers resolve `device`; here only the info
    det = load_detector(model, "cpu" if remote else device, precision)
    settings = resolve_settings(
        det.info, tile=tile, overlap=overlap, batch_size=batch_size, threshold=threshold, tta=tta
    )
    det.batch_size = settings.batch_size
    tasks = plan_surface(
        [str(i) for i in images], pointclouds, det.info, settings, out, mosaic, area
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
        precision=precision,
        workers=workers,
        scheduler=scheduler,
        resume=resume,
        shard=shard,
        progress=progress,
    )


def plan_surface(
    images: list[str],
    pointclouds: list[str | Path] | None,
    info: ModelInfo,
    settings: Settings,
    out: Path,
    mosaic: bool = False,
    aoi: Any = None,
) -> list[Task]:
    """`plan_tasks`, or with `mosaic` the tasks of the scenes as one surface (mosaic.py)."""
    if not mosaic:
        return plan_tasks(images, pointclouds, info, settings, aoi=aoi)
    from geodetect.mosaic import plan

    if pointclouds:
        raise InputError("--mosaic reads scenes only; run models with elevation scene by scene")
    for image in images:
        check_scene(image, info)  # band and file errors name the file, not the VRT
    surface = plan(images, parts_dir(out))  # the VRT lives with the part files
    tasks = plan_tasks(surface.images, None, info, settings, aoi=aoi)
    return [dataclasses.replace(t, group=surface.group, sources=surface.sources) for t in tasks]


# ------------------------------------------------------------------------------ engine glue


def run_inference(
    tasks: Sequence[Task],
    det: Detector,
    settings: Settings,
    *,
    model: str | Path,
    out: str | Path,
    device: str | None = "auto",
    precision: str = "fp32",
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    shard: str | tuple[int, int] | None = None,
    progress: bool = False,
    client: Any = None,
) -> Path:
    """Run planned tasks through `engine.execute` and write the merged detections.

    In-process runs reuse `det` (already loaded); cluster workers load the model from the
    same path once each. Returns the merged file (the shard's file for `shard`).
    """
    model = str(Path(model).resolve())
    model_hash = file_sha256(model)
    if client is None and not workers and not scheduler:
        cached_detector(model, model_hash, device, precision, loaded=det)
    else:  # a worker elsewhere has another working folder: send absolute paths
        tasks = [portable_task(t) for t in tasks]
    runner = partial(
        detect_task,
        model=model,
        model_hash=model_hash,
        device=device,
        precision=precision,
        settings=settings,
    )
    merge = partial(
        merge_in_scene_crs,
        nms_iou=settings.nms_iou,
        crs=next((t.grid.crs for t in tasks), None),
        out_crs=scene_crs(tasks),
    )
    result = execute(
        infer_items(tasks, model_hash, settings),
        runner,
        out,
        merge,
        workers=workers,
        scheduler=scheduler,
        client=client,
        resume=resume,
        shard=shard,
        progress=progress,
        check=lambda items, frames: check_some_valid([it.payload for it in items], frames),
        desc="infer",
    )
    return result.out


def detect_task(
    task: Task,
    *,
    model: str,
    model_hash: str,
    device: str | None,
    settings: Settings,
    precision: str = "fp32",
    on_progress: Callable[[float], None] | None = None,
) -> gpd.GeoDataFrame:
    """The engine's runner for one task (module level so workers can unpickle it)."""
    det = cached_detector(model, model_hash, device, precision, settings.batch_size)
    n = max(1, len(task.windows))
    on_tile = (lambda: on_progress(1 / n)) if on_progress else None
    return run_task(task, det, settings, on_tile=on_tile)


def infer_items(tasks: Sequence[Task], model_hash: str, settings: Settings) -> list[WorkItem]:
    """Work items of planned inference tasks, keyed for the resume manifest.

    The key holds the model's sha256, the scene's (and point cloud's) checksum and file
    name, the inference parameters except the batch size (a throughput knob that does not
    change results) and the task's extent within its scene. Keys must stay the same across
    versions for `--resume` to find earlier parts: change nothing that goes into them.
    """
    import shapely

    params = {k: v for k, v in dataclasses.asdict(settings).items() if k != "batch_size"}
    sums: dict[str, str] = {}

    def checksum(path: str | None) -> str | None:
        if path is None:
            return None
        if path not in sums:
            sums[path] = scene_checksum(path)
        return sums[path]

    tiles: dict[str, int] = {}
    for t in tasks:
        tiles[t.image] = tiles.get(t.image, 0) + len(t.windows)
    items = []
    for t in tasks:
        name = display_name(t.image)
        extent = {"index": t.index, "n": t.n_tasks, "tile": t.tile, "windows": t.windows}
        aoi = getattr(t, "aoi", None)  # what is kept, and how it is named and merged
        extent["aoi"] = None if aoi is None else shapely.to_wkb(aoi, hex=True)
        extent["group"] = getattr(t, "group", None)
        extent["sources"] = getattr(t, "sources", None)
        key = task_key(
            model=model_hash,
            scene=checksum(t.image),
            scene_name=name,
            cloud=checksum(t.pointcloud),
            params=params,
            extent=hashlib.sha256(canonical_json(extent).encode()).hexdigest(),
        )
        share = len(t.windows) / max(1, tiles[t.image])
        items.append(
            WorkItem(
                key,
                f"{Path(t.image).resolve()}\x00{t.index:08d}",
                t,
                f"{name} [{t.index + 1}/{t.n_tasks}]",
                t.grid.width * t.grid.height * share,
            )
        )
    return items


def _absolute(path: str | None) -> str | None:
    """A local path made absolute; URLs and GDAL virtual paths unchanged."""
    if path is None or "://" in path or path.startswith("/vsi"):
        return path
    return str(Path(path).resolve())


def portable_task(task: Task) -> Task:
    """The task with absolute scene and point-cloud paths, for a worker on another host."""
    return dataclasses.replace(
        task, image=_absolute(task.image), pointcloud=_absolute(task.pointcloud)
    )
