"""Long GUI work (samples, train, detect) in a child process that streams JSON lines back.

Why a process and not a thread: training imports `torch._dynamo` (and with it LLVM), which
segfaults a process that already holds a Mesa GL context; pyproj's per-thread contexts crash
in worker threads; an uncaught exception in a Qt worker thread aborts napari. A child process
shares none of that, can be killed to cancel, and every way it ends becomes one line of text.

The parent side (`Job`) is Qt-free and imports nothing heavy: the GUI polls `Job.poll()`
from a timer. The child side is `python -m geodetect.jobs KIND PARAMS_JSON`; it writes one
JSON object per line on stdout: `{"progress": {...}}`, then `{"result": {...}}` or
`{"error": "one line"}`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KINDS = ("train", "detect", "samples")
PROGRESS_EVERY_S = 0.2  # the child sends at most this often (the GUI redraws no faster)


def train_params(
    images: Sequence[str],
    labels: str | Path,
    out_dir: str | Path,
    clouds: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    init: str | Path | None = None,
    config: str | Path | None = None,
) -> dict:
    """The one place that builds a training job. `init` (a previous model.pt) warm-starts it
    (`geodetect train --init`): a review round fine-tunes instead of training from nothing."""
    params: dict[str, Any] = {
        "images": [str(i) for i in images],
        "labels": str(labels),
        "out_dir": str(out_dir),
        "clouds": [str(c) for c in clouds] if clouds else None,
        "overrides": dict(overrides or {}),
        "config": str(config) if config else None,
    }
    if init is not None:
        params["init"] = str(init)
    return params


class Job:
    """One child process running one kind of work; `poll()` drains its messages."""

    def __init__(self, kind: str, params: dict, python: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        self.kind = kind
        self.progress: dict = {}
        self.result: dict | None = None
        self.error: str | None = None
        self._messages: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYPROJ_GLOBAL_CONTEXT="ON")
        self._proc = subprocess.Popen(
            [python or sys.executable, "-m", "geodetect.jobs", kind, json.dumps(params)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: cancel reaches data workers too
        )
        self.pid = self._proc.pid
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()
        self._cancelled = False

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict):
                self._messages.put(msg)

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip())
            del self._stderr[:-20]

    @property
    def running(self) -> bool:
        return self._proc.poll() is None or any(t.is_alive() for t in self._readers)

    def poll(self) -> list[dict]:
        """New messages since the last call (never blocks); sets `result` / `error` at the end."""
        out = []
        while True:
            try:
                msg = self._messages.get_nowait()
            except queue.Empty:
                break
            out.append(msg)
            if "progress" in msg:
                self.progress = dict(msg["progress"])
            if "result" in msg:
                self.result = dict(msg["result"])
            if "error" in msg:
                self.error = str(msg["error"])
        if not self.running and self.result is None and self.error is None:
            self.error = self._exit_message()
        return out

    def _exit_message(self) -> str:
        if self._cancelled:
            return f"{self.kind} cancelled"
        rc = self._proc.returncode
        last = next((s for s in reversed(self._stderr) if s.strip()), "")
        why = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        return f"{self.kind} stopped unexpectedly ({why}){': ' + last if last else ''}"

    def cancel(self) -> None:
        """Kill the child (its outputs are written atomically: nothing half-written stays)."""
        self._cancelled = True
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> None:
        """Block until the job ends (tests and scripts; the GUI polls instead)."""
        t0 = time.monotonic()
        while self.running:
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{self.kind} job still running after {timeout} s")
            time.sleep(0.05)
        self.poll()


# ------------------------------------------------------------------------------ child side


class _Emitter:
    """JSON lines on the original stdout; anything else the libraries print goes to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._last = 0.0

    def send(self, **msg: Any) -> None:
        self._out.write(json.dumps(msg, default=str) + "\n")
        self._out.flush()

    def progress(self, state: dict, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self.send(progress=state)


def _train(p: dict, emit: _Emitter) -> dict:
    from geodetect.config import load_config
    from geodetect.training import train

    config = load_config(p.get("config"), p.get("overrides") or {})
    kwargs = {"init": p["init"]} if p.get("init") else {}
    model = train(
        images=p["images"],
        labels=p["labels"],
        pointclouds=p.get("clouds"),
        config=config,
        out_dir=p["out_dir"],
        device=p.get("device", "auto"),
        seed=int(p.get("seed", 0)),
        callback=emit.progress,
        **kwargs,
    )
    return {"model": str(model)}


def _detect(p: dict, emit: _Emitter) -> dict:
    """The CLI's `infer` for the scene; a region (the view) is its area of interest."""
    from geodetect.aoi import OutsideError
    from geodetect.inference import infer

    emit.progress({"stage": "detect"}, force=True)
    out = Path(p["out"])
    try:
        infer(
            model=p["model"],
            images=[p["image"]],
            pointclouds=p.get("clouds"),
            out=out,
            threshold=p.get("threshold"),
            aoi=p.get("region"),
        )
    except OutsideError:  # the view is off the scene: nothing there
        from geodetect.labels import write_vector
        from geodetect.merge import empty_detections
        from geodetect.raster import open_raster

        write_vector(empty_detections(open_raster(p["image"]).grid.crs), out)
    return {"detections": str(out)}


def _samples(p: dict, emit: _Emitter) -> dict:
    import numpy as np

    from geodetect.config import load_config
    from geodetect.gallery import gallery_from_index
    from geodetect.samples import write_samples

    emit.progress({"stage": "samples"}, force=True)
    out = Path(p["out_dir"])
    index = write_samples(
        images=p["images"],
        labels=p["labels"],
        pointclouds=p.get("clouds"),
        config=load_config(p.get("config"), p.get("overrides") or {}),
        out_dir=out,
    )
    mosaic, info = gallery_from_index(index, int(p.get("max_chips", 64)))
    path = out / "gallery.npy"
    np.save(path, (np.clip(mosaic, 0, 1) * 255).astype(np.uint8))  # napari shows uint8 fastest
    return {"mosaic": str(path), **info}


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: run one job, report its end as one JSON line; exit 0 / 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    emit = _Emitter()
    try:
        kind, params = args[0], json.loads(args[1])
        run = {"train": _train, "detect": _detect, "samples": _samples}[kind]
        emit.send(result=run(params, emit))
        return 0
    except KeyboardInterrupt:
        emit.send(error="interrupted")
    except MemoryError:
        emit.send(error="out of memory")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the dock
        from geodetect.errors import GeodetectError

        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not isinstance(exc, GeodetectError):
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        emit.send(error=text)
    return 2


if __name__ == "__main__":
    sys.exit(main())
