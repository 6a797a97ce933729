"""Scale-out: run many independent tasks in-process or on a Dask cluster, resumably.

A run is a list of `WorkItem`s (a scene, or a block of rows of a huge scene) and a `runner`
that turns one item's payload into a detections GeoDataFrame. Every finished task is written
atomically to its own part file under `<out>.parts/` and recorded in the resume manifest
(`geodetect.manifest`); when all tasks of the run are done the parts are read back in the
items' order and merged by the caller's `merge` (rotated-IoU NMS across tasks), so an
interrupted-then-resumed run and a straight run merge exactly the same inputs.

Engines: in-process (default), a local Dask cluster (`workers=N`, processes) or an existing
`dask.distributed` scheduler (`scheduler="tcp://host:port"`). Only this process (the client)
writes files; workers need to read the scenes and the model at the same paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import geopandas as gpd

from geodetect.errors import GeodetectError, InputError
from geodetect.manifest import (
    Manifest,
    Record,
    canonical_json,
    file_sha256,
    finished,
    manifest_path,
    manifest_paths,
    parse_shard,
    scene_checksum,
    shard_select,
    task_key,
)
from geodetect.remote import display_name, is_remote

Runner = Callable[[Any], gpd.GeoDataFrame]
Merge = Callable[[list[gpd.GeoDataFrame]], gpd.GeoDataFrame]
PART_SUFFIX = ".gpkg"
CONNECT_TIMEOUT = "20s"  # to reach an existing scheduler
_PART_RE = re.compile(r"^[0-9a-f]{64}\.gpkg$")


@dataclass(frozen=True)
class WorkItem:
    """One task: `payload` goes to the runner; `key` identifies its result for resuming."""

    key: str  # manifest key (sha256 of model, scene checksum, parameters, extent)
    sort_key: str  # stable order for shards, independent of how inputs were listed
    payload: Any  # picklable: shipped to a worker
    label: str = ""  # for messages, e.g. "a.tif [2/5]"
    pixels: float = 0.0  # scene pixels this task covers (progress in Mpx/s)


@dataclass
class RunResult:
    """What `execute` did."""

    out: Path  # the merged file (the shard's file for a shard)
    frames: list[gpd.GeoDataFrame]  # per-task results, read back from the parts, items' order
    ran: int  # tasks run now
    reused: int  # tasks found finished in a manifest


def parts_dir(out: str | Path) -> Path:
    """Folder of the part files of an output."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def shard_output(out: str | Path, shard: tuple[int, int]) -> Path:
    """`det.gpkg` → `det.shard-2-of-4.gpkg`: the merged file of one shard's tasks."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{shard[0]}-of-{shard[1]}{out.suffix}")


def check_outputs(
    out: str | Path, shard: str | tuple[int, int] | None, inputs: Sequence[Any]
) -> None:
    """Before any work: the output, its shard file, manifest and part folder are no input."""
    from geodetect.atomic import check_not_input

    sel = parse_shard(shard)
    files = [Path(out), manifest_path(out, sel), *([shard_output(out, sel)] if sel else [])]
    check_not_input(files, inputs, "--out", folders=[parts_dir(out)])


_ADDRESS = re.compile(r"^(?:(tcp|tls|ucx|ws|wss)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d+)$")


def check_scheduler(address: str | None) -> None:
    """A Dask scheduler address is `[tcp://]HOST:PORT`; checked before any work is reset."""
    if address is None:
        return
    m = _ADDRESS.match(address.strip())
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise InputError(
            f"--scheduler {address}: not a scheduler address; use tcp://HOST:PORT "
            "(e.g. tcp://head:8786)"
        )


# ------------------------------------------------------------------------------ running


def execute(
    items: Sequence[WorkItem],
    runner: Runner,
    out: str | Path,
    merge: Merge,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    resume: bool = False,
    shard: str | tuple[int, int] | None = None,
    progress: bool = False,
    retries: int = 2,
    keep_parts: bool = False,
    check: Callable[[Sequence[WorkItem], list[gpd.GeoDataFrame]], None] | None = None,
) -> RunResult:
    """Run the items not yet finished, then merge every part into `out` atomically.

    With `shard="i/N"` only that shard's tasks run and their merge goes to
    `shard_output(out)`; a later run over all inputs with `resume=True` finds every part
    done and only merges. `check(items, frames)` may raise before anything is written. The
    parts and manifests are removed after a whole (unsharded) run unless `keep_parts`.
    """
    out = Path(out)
    sel = parse_shard(shard)
    chosen = [items[j] for j in shard_select([it.sort_key for it in items], sel)]
    if sel:  # keep the caller's order (merge order) within the shard
        keep = {id(it) for it in chosen}
        chosen = [it for it in items if id(it) in keep]
    folder = parts_dir(out)
    manifest = Manifest(manifest_path(out, sel))
    if not resume:
        manifest.reset()
    done = finished(out, folder, [it.key for it in chosen]) if resume else {}
    todo = [it for it in chosen if it.key not in done]
    folder.mkdir(exist_ok=True)
    with _progress(chosen, done, progress) as bar:
        for item, frame in _results(todo, runner, workers, scheduler, client, retries, bar):
            rec = _write_part(folder, item, frame)
            manifest.append(rec)
            done[item.key] = rec
            bar.finish(item)
    frames = [_read_part(folder, done[it.key]) for it in chosen]
    if check:
        check(chosen, frames)
    final = shard_output(out, sel) if sel else out
    from geodetect.labels import write_vector

    written = Path(write_vector(merge(frames), final))
    if not sel and not keep_parts:
        cleanup(out)
    return RunResult(written, frames, ran=len(todo), reused=len(chosen) - len(todo))


def _results(
    todo: list[WorkItem],
    runner: Runner,
    workers: int | None,
    scheduler: str | None,
    client: Any,
    retries: int,
    bar: _Bar,
) -> Iterator[tuple[WorkItem, gpd.GeoDataFrame]]:
    """(item, frame) as tasks finish, from the chosen engine."""
    if not todo:
        return
    if workers and scheduler:
        raise InputError("give either --workers N (a local cluster) or --scheduler ADDRESS")
    if workers is not None and workers < 0:
        raise InputError(f"--workers {workers}: give a number of worker processes (1 or more)")
    if client is None and not workers and not scheduler:
        steps = _accepts_progress(runner)  # in-process: progress within a task too
        for item in todo:
            kw = {"on_progress": partial(bar.advance, item)} if steps else {}
            yield item, _unwrap(item, run_guarded(runner, item.payload, **kw))
        return
    with _client(workers, scheduler, client) as c:
        yield from _dask_results(c, todo, runner, retries)


@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None, client: Any) -> Iterator[Any]:
    """The caller's client, a client of an existing scheduler, or a local process cluster."""
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise GeodetectError(
                f"--scheduler {scheduler}: cannot connect ({exc}); is the scheduler running?"
            ) from None
        with c:
            yield c
        return
    cluster = LocalCluster(
        n_workers=int(workers or 1),
        threads_per_worker=1,  # one task per process: the model runs its own threads
        processes=True,
        dashboard_address=":0",  # no clash with a dashboard already on 8787
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster) as c:
        yield c


def _dask_results(
    client: Any, todo: list[WorkItem], runner: Runner, retries: int
) -> Iterator[tuple[WorkItem, gpd.GeoDataFrame]]:
    """Submit every task (retried on errors; rescheduled when a worker dies) and yield them
    as they complete; on a failure the rest are cancelled."""
    from distributed import KilledWorker, as_completed

    # the runner travels with each task (small); scattered data would die with its worker
    futures = {
        client.submit(run_guarded, runner, it.payload, retries=retries, pure=False): it
        for it in todo
    }
    try:
        for fut in as_completed(futures):
            item = futures[fut]
            try:
                value = fut.result()
            except KilledWorker:
                raise GeodetectError(
                    f"{item.label or item.key[:12]}: its worker died on every try (out of "
                    "memory?); finished tasks are kept: rerun with --resume"
                ) from None
            yield item, _unwrap(item, value)
    finally:
        client.cancel(list(futures))


def run_guarded(runner: Runner, payload: Any, **kwargs: Any) -> Any:
    """Run one task; a user error comes back as a value so Dask does not retry it."""
    try:
        return runner(payload, **kwargs)
    except GeodetectError as exc:
        return _Failure(exc)


@dataclass
class _Failure:
    error: GeodetectError


def _unwrap(item: WorkItem, value: Any) -> gpd.GeoDataFrame:
    if isinstance(value, _Failure):
        raise value.error
    if not isinstance(value, gpd.GeoDataFrame):
        raise TypeError(f"task {item.label}: runner returned {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------ parts


def _write_part(folder: Path, item: WorkItem, frame: gpd.GeoDataFrame) -> Record:
    """Write a task's detections atomically; its manifest record (attrs kept there)."""
    from geodetect.labels import write_vector

    name = item.key + PART_SUFFIX
    write_vector(frame, folder / name)
    attrs = {k: v for k, v in frame.attrs.items() if isinstance(v, (int, float, str, bool))}
    return Record(item.key, name, item.label, len(frame), attrs)


def _read_part(folder: Path, rec: Record) -> gpd.GeoDataFrame:
    """A part file as written, with the attrs from its manifest record."""
    from geodetect.labels import read_vector

    frame = read_vector(folder / rec.part)
    frame.attrs.update(rec.attrs or {})
    return frame


def cleanup(out: str | Path) -> None:
    """Remove the part files and manifests of an output (after its final merge)."""
    folder = parts_dir(out)
    if folder.is_dir():
        for p in folder.iterdir():
            if _PART_RE.match(p.name) or p.name.startswith("."):
                p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
    for m in manifest_paths(out):
        m.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ progress


class _Bar:
    """A bar in scene megapixels (rate in Mpx/s, ETA) with tasks done as a postfix."""

    def __init__(self, items: list[WorkItem], done: dict[str, Record], enabled: bool) -> None:
        from tqdm import tqdm

        self.n_items = len(items)
        self.n_done = sum(1 for it in items if it.key in done)
        self.shown: dict[str, float] = {}  # Mpx already shown for running tasks
        self.tqdm = tqdm(
            total=sum(it.pixels for it in items) / 1e6,
            initial=sum(it.pixels for it in items if it.key in done) / 1e6,
            unit="Mpx",
            desc="infer",
            disable=not enabled,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} Mpx [{elapsed}<{remaining}, "
            "{rate_fmt}{postfix}]",
        )
        self.tqdm.set_postfix_str(f"tasks {self.n_done}/{self.n_items}")

    def advance(self, item: WorkItem, fraction: float) -> None:
        """Part of a running task done (fraction of the task)."""
        step = min(fraction * item.pixels / 1e6, item.pixels / 1e6 - self.shown.get(item.key, 0))
        self.shown[item.key] = self.shown.get(item.key, 0.0) + step
        self.tqdm.update(step)

    def finish(self, item: WorkItem) -> None:
        self.n_done += 1
        self.tqdm.update(item.pixels / 1e6 - self.shown.pop(item.key, 0.0))
        self.tqdm.set_postfix_str(f"tasks {self.n_done}/{self.n_items}")


@contextlib.contextmanager
def _progress(items: list[WorkItem], done: dict[str, Record], enabled: bool) -> Iterator[_Bar]:
    bar = _Bar(items, done, enabled)
    try:
        yield bar
    finally:
        bar.tqdm.close()


def _accepts_progress(runner: Runner) -> bool:
    try:
        return "on_progress" in inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------ inference

_DETECTORS: dict[tuple[str, str, str], Any] = {}  # per process: each worker loads a model once
LOADS = {"count": 0}  # models loaded in this process (tests check "once per worker")


def cached_detector(model: str, model_hash: str, device: str | None, batch_size: int) -> Any:
    """The detector for a model file in this process, loaded on first use."""
    from geodetect.inference import load_detector

    key = (model, model_hash, str(device))
    if key not in _DETECTORS:
        det = load_detector(model, device)
        det.batch_size = batch_size
        _DETECTORS[key] = det
        LOADS["count"] += 1
    return _DETECTORS[key]


def detect_task(
    task: Any,
    *,
    model: str,
    model_hash: str,
    device: str | None,
    settings: Any,
    on_progress: Callable[[float], None] | None = None,
) -> gpd.GeoDataFrame:
    """Runner of one inference task (module level so workers can unpickle it)."""
    from geodetect.inference import run_task

    det = cached_detector(model, model_hash, device, settings.batch_size)
    n = max(1, len(task.windows))
    on_tile = (lambda: on_progress(1 / n)) if on_progress else None
    return run_task(task, det, settings, on_tile=on_tile)


def infer_items(tasks: Sequence[Any], model_hash: str, settings: Any) -> list[WorkItem]:
    """Work items of planned inference tasks, keyed for the resume manifest.

    The key holds the model's sha256, the scene's (and point cloud's) checksum and file
    name, the inference parameters except the batch size (a throughput knob that does not
    change results) and the task's extent within its scene.
    """
    from dataclasses import asdict

    import shapely

    params = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
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


def run_inference(
    tasks: Sequence[Any],
    det: Any,
    settings: Any,
    *,
    model: str | Path,
    out: str | Path,
    device: str | None = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    shard: str | tuple[int, int] | None = None,
    progress: bool = False,
    client: Any = None,
) -> Path:
    """Run planned inference tasks through `execute` and write the merged detections.

    In-process runs reuse `det` (already loaded); cluster workers load the model from the
    same path once each. Returns the merged file (the shard's file for `shard`).
    """
    from geodetect.inference import _check_some_valid
    from geodetect.merge import merge_detections

    model = str(Path(model).resolve())
    model_hash = file_sha256(model)
    local = client is None and not workers and not scheduler
    if local:
        _DETECTORS[(model, model_hash, str(device))] = det
    else:  # a worker elsewhere has another working folder: send absolute paths
        tasks = [portable_task(t) for t in tasks]
    runner = partial(
        detect_task, model=model, model_hash=model_hash, device=device, settings=settings
    )
    crs = next((t.grid.crs for t in tasks), None)
    result = execute(
        infer_items(tasks, model_hash, settings),
        runner,
        out,
        partial(
            _merge_in_scene_crs,
            merge=merge_detections,
            nms_iou=settings.nms_iou,
            crs=crs,
            out_crs=_scene_crs(tasks),
        ),
        workers=workers,
        scheduler=scheduler,
        client=client,
        resume=resume,
        shard=shard,
        progress=progress,
        check=lambda items, frames: _check_some_valid([it.payload for it in items], frames),
    )
    return result.out


def _absolute(path: str | None) -> str | None:
    """A local path made absolute; URLs and GDAL virtual paths unchanged."""
    if path is None or "://" in path or path.startswith("/vsi"):
        return path
    return str(Path(path).resolve())


def portable_task(task: Any) -> Any:
    """The task with absolute scene and point-cloud paths, for a worker on another host."""
    from dataclasses import replace

    return replace(task, image=_absolute(task.image), pointcloud=_absolute(task.pointcloud))


def _scene_crs(tasks: Sequence[Any]) -> Any:
    """The first scene's own CRS: what the detections file is written in (the contract)."""
    from geodetect.raster import open_raster

    return open_raster(tasks[0].image).grid.crs if tasks else None


def _merge_in_scene_crs(frames: list, *, merge: Any, nms_iou: float, crs: Any, out_crs: Any):
    """Merge in the metric working CRS, then move to the scene's CRS when it differs (a
    geographic scene is processed in its UTM zone); angles and headings are turned by the
    meridian convergence (`geodetect.north`), lengths stay in metres."""
    from geodetect.north import reproject_detections

    gdf = merge(frames, nms_iou=nms_iou, crs=crs)
    if out_crs is None or crs is None or gdf.crs is None:
        return gdf
    return reproject_detections(gdf, out_crs)


def expand_images(args: Sequence[str], from_list: str | Path | None = None) -> list[str]:
    """IMAGE arguments and `--from-list FILE` lines as scene paths, in order, duplicates once.

    An argument that is not an existing file is a glob pattern (quoted on the command line,
    or too many files for the shell); a pattern matching nothing is an error. List lines are
    paths as given (relative to the working folder); blank lines and `#` comments are skipped.
    """
    import glob

    found: list[str] = []
    for arg in args:
        if Path(arg).exists() or is_remote(arg) or not glob.has_magic(arg):
            found.append(arg)  # missing plain paths fail later with the raster's own error
            continue
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"{arg}: no file matches this pattern")
        found += matches
    if from_list is not None:
        lst = Path(from_list)
        if not lst.is_file():
            raise InputError(f"--from-list {lst}: no such file")
        lines = lst.read_text(errors="replace").splitlines()
        found += [s for line in lines if (s := line.strip()) and not s.startswith("#")]
    if not found:
        raise InputError("no scenes: give IMAGE arguments (paths or globs) or --from-list FILE")
    return list(dict.fromkeys(found))
