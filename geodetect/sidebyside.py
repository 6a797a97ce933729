"""An ensemble's members trained side by side, one process per member, on a multi-core CPU.

Why: one training step keeps two cores only partly busy — half of an epoch is chip
augmentation in one Python thread, and a small network's convolutions scale poorly across
threads — so on a 2-core CPU two 1-thread trainings side by side do ~1.4x the work of one
2-thread training (2 Yellowstone members, 6 epochs, fresh `geodetect train`: 64.1 s side by
side, 93.0 s one after the other). Each member
is the same whole `_train` run as in a sequential ensemble (same seed, same chips), only its
thread count differs; the child reports its steps on a queue and the parent runs the one
progress bar and the caller's callback (an exception there stops every member, as it stops a
sequential run). A member's error reaches the caller as that error; a member whose process
dies (killed, out of memory) is a one-line error naming it.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from geodetect.errors import GeodetectError

POLL_S = 0.5  # how often the parent checks that its members are alive


def member_processes(setting: int, members: int, dev: torch.device, world_size: int) -> int:
    """How many members train at once: `train.member_processes`, or (0, auto) all of them on
    a CPU; 1 on a GPU or under torchrun (one device).

    All at once even with more members than threads: 3 Yellowstone members on 2 cores, 1
    thread each, took 14.7 s per epoch each (660 s for 45 epochs); two at a time and then the
    third alone would take ~900 s or more (the last member runs while a core idles)."""
    if members <= 1 or dev.type != "cpu" or world_size > 1:
        return 1
    return max(1, min(members, setting or members))


def run_members(
    run: Callable[..., Path],
    jobs: list[dict[str, Any]],
    processes: int,
    callback: Callable[[dict], None] | None,
    progress: bool,
) -> list[Path]:
    """`run(**job, callback=...)` for every job, `processes` at a time, each process with an
    equal share of this process's torch threads (`run`: a module-level function, sent to the
    child by name). Returns the model paths in job order."""
    threads = max(1, torch.get_num_threads() // processes)
    ctx = mp.get_context("spawn")  # torch's OpenMP threads do not survive a fork
    events = ctx.Queue()
    pending = list(range(len(jobs)))
    running: dict[int, mp.process.BaseProcess] = {}
    done: dict[int, Path] = {}
    steps = [0] * len(jobs)
    totals: list[int | None] = [None] * len(jobs)
    from tqdm import tqdm

    bar = tqdm(total=0, disable=not progress, desc="train", unit="step")
    try:
        while len(done) < len(jobs):
            while pending and len(running) < processes:
                k = pending.pop(0)
                # not daemonic: a member may start DataLoader workers (train.workers); the
                # `finally` below stops the members however this loop ends
                proc = ctx.Process(target=_member_main, args=(run, k, jobs[k], threads, events))
                proc.start()
                running[k] = proc
            try:
                kind, k, payload = events.get(timeout=POLL_S)
            except queue.Empty:
                _check_alive(running)  # a member that died reports nothing
                continue
            _check_alive(running)  # ... while the others may go on reporting
            if kind == "step":
                steps[k], totals[k] = payload["step"], payload["total_steps"]
                total = _total(totals, len(jobs))
                bar.total = total
                bar.n = sum(steps)
                bar.set_postfix(member=k + 1, epoch=payload["epoch"], loss=f"{payload['loss']:.3f}")
                if callback is not None:
                    callback(
                        {
                            **payload,
                            "step": sum(steps),
                            "total_steps": total,
                            "member": k + 1,
                            "members": len(jobs),
                        }
                    )
            elif kind == "done":
                running.pop(k).join()
                done[k] = Path(payload)
            else:  # "error"
                running.pop(k).join()
                raise _unpickled(payload)
    finally:
        bar.close()
        for proc in running.values():  # an error, a cancel, Ctrl-C: stop the others too
            proc.terminate()
        for proc in running.values():
            proc.join()
    return [done[k] for k in range(len(jobs))]


def _total(totals: list[int | None], n: int) -> int:
    """Steps of all members: a member not started yet counts as the started ones do."""
    known = [t for t in totals if t]
    return sum(known) + (n - len(known)) * (known[0] if known else 0)


def _check_alive(running: dict[int, mp.process.BaseProcess]) -> None:
    """A member process that exited without reporting was killed (OOM killer, a signal)."""
    for k, proc in running.items():
        if not proc.is_alive() and proc.exitcode not in (None, 0):
            raise GeodetectError(
                f"member {k + 1}'s training process died (exit code {proc.exitcode}); "
                "out of memory? set train.member_processes: 1 to train members one by one"
            )


def _member_main(
    run: Callable[..., Path], k: int, job: dict[str, Any], threads: int, events: Any
) -> None:
    """Child process: one member's whole training, its steps and its outcome on `events`."""
    sys.stdout = sys.stderr  # a parent speaking a protocol on stdout (napari's jobs) keeps it
    torch.set_num_threads(threads)

    def report(event: dict) -> None:
        events.put(("step", k, event))

    try:
        path = run(**job, callback=report)
    except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
        events.put(("error", k, _pickled(exc)))
        return
    events.put(("done", k, str(path)))


def _pickled(exc: BaseException) -> bytes:
    """The exception itself when it pickles (its type decides the CLI's message), else a
    GeodetectError with its text."""
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001
        return pickle.dumps(GeodetectError(f"{type(exc).__name__}: {exc}"))


def _unpickled(data: bytes) -> BaseException:
    return pickle.loads(data)
