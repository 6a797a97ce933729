"""The task engine: run many independent tasks in-process or on a Dask cluster, resumably.

It knows nothing of detection: the caller hands it `WorkItem`s (picklable payloads keyed for
resuming), a `runner` that turns one payload into a GeoDataFrame, a `merge` of the frames
and an optional `check`. Every finished task is written atomically to its own part file
under `<out>.parts/` and recorded in the resume manifest (`geodetect.manifest`); when all
tasks of the run are done the parts are read back in the items' order and merged, so an
interrupted-then-resumed run and a straight run merge exactly the same inputs.

Engines: in-process (default), a local Dask cluster (`workers=N`, processes) or an existing
`dask.distributed` scheduler (`scheduler="tcp://host:port"`). Only this process (the client)
writes files; workers need to read the payloads' inputs at the same paths.
"""

from __future__ import annotations

import contextlib
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
    finished,
    manifest_path,
    manifest_paths,
    parse_shard,
    shard_select,
)

Runner = Callable[[Any], gpd.GeoDataFrame]
Merge = Callable[[list[gpd.GeoDataFrame]], gpd.GeoDataFrame]
PART_SUFFIX = ".gpkg"
CONNECT_TIMEOUT = "20s"  # to reach an existing scheduler
_PART_RE = re.compile(r"^[0-9a-f]{64}\.gpkg$")


@dataclass(frozen=True)
class WorkItem:
    """One task: `payload` goes to the runner; `key` identifies its result for resuming."""

    key: str  # manifest key: the same inputs give the same key (the caller's task_key)
    sort_key: str  # stable order for shards, independent of how inputs were listed
    payload: Any  # picklable: shipped to a worker
    label: str = ""  # for messages, e.g. "a.tif [2/5]"
    pixels: float = 0.0  # pixels this task covers (progress in Mpx/s)


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
    desc: str = "run",
) -> RunResult:
    """Run the items not yet finished, then merge every part into `out` atomically.

    With `shard="i/N"` only that shard's tasks run and their merge goes to
    `shard_output(out)`; a later run over all inputs with `resume=True` finds every part
    done and only merges. `check(items, frames)` may raise before anything is written. The
    parts and manifests are removed after a whole (unsharded) run unless `keep_parts`;
    `desc` names the progress bar.
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
    with _progress(chosen, done, progress, desc) as bar:
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
    """Write a task's frame atomically; its manifest record (attrs kept there)."""
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
    """A bar in megapixels (rate in Mpx/s, ETA) with tasks done as a postfix."""

    def __init__(
        self, items: list[WorkItem], done: dict[str, Record], enabled: bool, desc: str
    ) -> None:
        from tqdm import tqdm

        self.n_items = len(items)
        self.n_done = sum(1 for it in items if it.key in done)
        self.shown: dict[str, float] = {}  # Mpx already shown for running tasks
        self.tqdm = tqdm(
            total=sum(it.pixels for it in items) / 1e6,
            initial=sum(it.pixels for it in items if it.key in done) / 1e6,
            unit="Mpx",
            desc=desc,
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
def _progress(
    items: list[WorkItem], done: dict[str, Record], enabled: bool, desc: str
) -> Iterator[_Bar]:
    bar = _Bar(items, done, enabled, desc)
    try:
        yield bar
    finally:
        bar.tqdm.close()


def _accepts_progress(runner: Runner) -> bool:
    try:
        return "on_progress" in inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return False
