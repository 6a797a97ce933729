"""Long work from the dock: samples, training and detection jobs, polled from a timer.

The jobs themselves (`geodetect.jobs`) are Qt-free child processes; this is the Qt glue:
start one job at a time, show its progress, turn its end into a layer or one message.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, QTimer

from geodetect.errors import GeodetectError
from geodetect.jobs import Job, train_params
from geodetect.plugin._coords import KEY

if TYPE_CHECKING:
    from geodetect.plugin._dock import GeodetectWidget

POLL_MS = 100
FILE_ERRORS = (GeodetectError, OSError, ValueError)


class Work(QObject):
    """The dock's one running job (or none)."""

    def __init__(self, dock: GeodetectWidget):
        super().__init__(dock)
        self.dock = dock
        self.job: Job | None = None
        self._on_job_result = None
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._poll_job)

    def images(self) -> list[str]:
        return (
            [self.dock.model.frame.scene_path]
            if self.dock.model and self.dock.model.frame.scene_path
            else []
        )

    def clouds(self) -> list[str] | None:
        if not self.dock.train_tab.use_cloud.isChecked():
            return None
        found = [
            ly.metadata[KEY]["cloud"]
            for ly in self.dock.viewer.layers
            if ly.metadata.get(KEY, {}).get("cloud")
        ]
        return found[:1] or None

    def run_job(self, kind: str, params: dict, on_result, label: str) -> Job | None:
        if self.job is not None:
            self.dock.say(f"{self.job.kind} is still running; wait or cancel it", error=True)
            return None
        try:
            self.job = Job(kind, params)
        except OSError as exc:
            self.dock.say(f"{kind} could not start: {exc}", error=True)
            return None
        self._on_job_result = on_result
        self._show_running(kind)
        self.dock.say(label)
        self._poll.start()
        return self.job

    def _poll_job(self) -> None:
        job = self.job
        if job is None:
            return
        job.poll()
        if job.kind == "train" and job.progress:
            self.dock.train_tab.show_progress(job.progress)
        if job.result is None and job.error is None:
            return
        self._poll.stop()
        self.job = None
        self._show_running(None)
        if job.error is not None:
            self.dock.say(
                f"{job.kind} failed: {job.error}" if "cancel" not in job.error else job.error,
                error="cancel" not in job.error,
            )
            return
        try:
            self._on_job_result(job.result)
        except FILE_ERRORS as exc:
            self.dock.say(f"{job.kind}: {exc}", error=True)

    def _show_running(self, kind: str | None) -> None:
        """The running job's tab gets an enabled Cancel (samples: the Label tab's)."""
        self.dock.label_tab.running(kind == "samples")
        self.dock.train_tab.running(kind == "train")
        self.dock.detect_tab.running(kind == "detect")

    def cancel_job(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def show_samples(self, out_dir: str | Path | None = None) -> Job | None:
        """Gallery of the normalised chips the trainer will see, beside the scene."""
        from geodetect.plugin._gallery import add_gallery

        out = Path(out_dir or tempfile.mkdtemp(prefix="geodetect-samples-"))
        out.mkdir(parents=True, exist_ok=True)
        labels = (
            self.dock.save_labels(out / "labels.gpkg") if self.dock.ensure_label_layers() else None
        )
        if labels is None:
            return None
        params = {
            "images": self.images(),
            "labels": str(labels),
            "clouds": self.clouds(),
            "out_dir": str(out),
        }
        show = lambda r: add_gallery(self.dock, r)  # noqa: E731
        return self.run_job("samples", params, show, "making samples…")

    def start_training(
        self, out_dir: str | Path | None = None, overrides: dict | None = None
    ) -> Job | None:
        """Save the labels and train in a child process (progress, loss, Cancel kills it).

        Each run gets its own folder `<output>/run-NNN` (labels.gpkg, model.pt), so a retrain
        never writes over the model it may start from."""
        if not self.dock.ensure_label_layers():
            return None
        images = self.images()
        tab = self.dock.train_tab
        root = Path(out_dir or tab.out.text() or Path(images[0]).parent / "geodetect_model")
        out = next_run(root)
        out.mkdir(parents=True, exist_ok=True)
        labels = self.dock.save_labels(out / "labels.gpkg")
        if labels is None:
            return None
        overrides = {"train.epochs": tab.epochs.value(), **(overrides or {})}
        config = tab.config.text().strip() or None
        # Warm start: a retrain fine-tunes the last model of this session (`train --init`).
        model = self.dock.model_path
        init = model if model is not None and model.is_file() else None
        params = train_params(images, labels, out, self.clouds(), overrides, init, config)
        return self.run_job("train", params, self._trained, "training…")

    def _trained(self, result: dict) -> None:
        self.dock.model_path = Path(result["model"])
        self.dock.detect_tab.model.setText(str(self.dock.model_path))
        run = self.dock.model_path.parent.name
        self.dock.say(f"trained {run}/model.pt; now Detect (tab) and review")

    def visible_region(self) -> dict | None:
        """The scene's visible part {"bounds": (left, bottom, right, top), "crs": WKT} from the
        layer's public `corner_pixels` (data index of the canvas corners, at the shown level)."""
        from affine import Affine

        from geodetect.plugin._coords import pixel_to_map

        layer = next(
            (ly for ly in self.dock.scene_layers() if ly.metadata[KEY]["path"] == self.images()[0]),
            None,
        )
        if layer is None:
            return None
        corners = np.asarray(layer.corner_pixels, np.float64)[:, -2:]
        if layer.multiscale:
            corners = corners * np.asarray(layer.downsample_factors[layer.data_level])[-2:]
        (r0, c0), (r1, c1) = corners
        meta = layer.metadata[KEY]
        px = np.array([[c0, r0], [c1 + 1, r0], [c1 + 1, r1 + 1], [c0, r1 + 1]])
        xy = pixel_to_map(px, Affine(*meta["transform"]))
        bounds = (*xy.min(axis=0), *xy.max(axis=0))
        return {"bounds": [float(v) for v in bounds], "crs": meta.get("crs")}

    def run_detection(self, region: bool = False, model: str | Path | None = None) -> Job | None:
        """Detect over the scene (or the visible part) with the CLI's code, in a child process."""
        model = model or self.dock.detect_tab.model.text() or self.dock.model_path
        if not model:
            self.dock.say("train or choose a model first", error=True)
            return None
        if not self.dock.ensure_label_layers():
            return None
        out = Path(tempfile.mkdtemp(prefix="geodetect-detect-")) / "detections.gpkg"
        params = {
            "model": str(model),
            "image": self.images()[0],
            "clouds": self.clouds(),
            "threshold": float(self.dock.detect_tab.threshold.value()),
            "region": self.visible_region() if region else None,
            "out": str(out),
        }
        return self.run_job("detect", params, self._detected, "detecting…")

    def _detected(self, result: dict) -> None:
        from geodetect.labels import read_vector

        self.dock.show_detections(read_vector(result["detections"]))


def next_run(root: Path) -> Path:
    """The first unused `root/run-NNN`."""
    n = 1
    while (root / f"run-{n:03d}").exists():
        n += 1
    return root / f"run-{n:03d}"
