"""The geodetect dock: Label / Train / Detect tabs over one labelling model.

Thin: the labels, undo/redo and autosave live in the Qt-free `_model.LabelModel`, the napari
layers in `_layers.LabelLayers`, long work (samples, train, detect) in a child process
(`geodetect.jobs`) polled from a timer, so the GUI never imports torch or runs pyproj in a
worker thread. Keys: on `positives` r / Shift-R rotate ±5°, f flips the front, w / Shift-W
widen / narrow; on `detections` a accepts, x rejects; Ctrl-Z / Ctrl-Shift-Z undo / redo.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QLabel, QMessageBox, QTabWidget, QVBoxLayout, QWidget

from geodetect.errors import GeodetectError
from geodetect.jobs import Job
from geodetect.plugin import _label_layer as ll
from geodetect.plugin import _model
from geodetect.plugin._coords import KEY, format_map, world_to_map
from geodetect.plugin._detect_tab import DetectTab
from geodetect.plugin._label_tab import LabelTab
from geodetect.plugin._layers import LabelLayers
from geodetect.plugin._train_tab import TrainTab
from geodetect.plugin._work import Work

DEFAULT_CLASSES = {"vehicle": True, "building": False}
AUTOSAVE_DELAY_MS = 500
FILE_ERRORS = (GeodetectError, OSError, ValueError)


class GeodetectWidget(QWidget):
    """One dock: Label / Train / Detect tabs, map coordinates and one message line."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model: _model.LabelModel | None = None
        self.layers: LabelLayers | None = None
        self.work = Work(self)
        self.last_error: str | None = None
        self.model_path: Path | None = None
        self.autosave_error: str | None = None
        self._autosave = QTimer(self)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave.timeout.connect(self.autosave)

        self.tabs = QTabWidget()
        self.label_tab, self.train_tab, self.detect_tab = (
            LabelTab(self),
            TrainTab(self),
            DetectTab(self),
        )
        for tab, name in ((self.label_tab, "Label"), (self.train_tab, "Train")):
            self.tabs.addTab(tab, name)
        self.tabs.addTab(self.detect_tab, "Detect")
        self.coords = QLabel("move over a layer to see map coordinates")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout = QVBoxLayout(self)
        for w in (self.tabs, self.coords, self.message):
            layout.addWidget(w)
        layout.addStretch(1)
        self.label_tab.fill_classes(DEFAULT_CLASSES)

        self.viewer.cursor.events.position.connect(self._on_cursor)
        self.viewer.layers.events.inserted.connect(self._refresh_scenes)
        self.viewer.layers.events.removed.connect(self._refresh_scenes)
        self._refresh_scenes()
        if self._existing_positives() is not None:
            self.ensure_label_layers()  # take over labels already open (the sample data)

    def say(self, text: str, error: bool = False) -> None:
        self.message.setText(("⚠ " if error else "") + text)
        self.last_error = text if error else self.last_error

    def confirm(self, question: str) -> bool:
        """Ask before a destructive step (tests replace this)."""
        answer = QMessageBox.question(self, "geodetect", question)
        return answer == QMessageBox.StandardButton.Yes

    def layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # ---------------------------------------------------------------------- scenes

    def scene_layers(self) -> list:
        """The raster scenes the reader opened. DSM/nDSM layers are not scenes: training
        needs the raster the labels belong to (they line up with it anyway)."""
        return [ly for ly in self.viewer.layers if ly.metadata.get(KEY, {}).get("kind") == "scene"]

    def _refresh_scenes(self, *_: object) -> None:
        box = self.label_tab.scene_box
        current = box.currentText()
        names = [ly.name for ly in self.scene_layers()]
        box.blockSignals(True)
        box.clear()
        box.addItems(names)
        if current in names or names:
            box.setCurrentText(current if current in names else names[0])
        box.blockSignals(False)
        self._show_autosave_state()

    def scene_meta(self) -> dict | None:
        layers = {ly.name: ly for ly in self.scene_layers()}
        layer = layers.get(self.label_tab.scene_box.currentText())
        return layer.metadata[KEY] if layer is not None else None

    def _on_cursor(self, event=None) -> None:
        meta = self.scene_meta()
        pos = np.asarray(self.viewer.cursor.position, np.float64)[-2:]
        if meta is None or pos.size < 2:
            return
        xy = world_to_map(pos[None], meta.get("crs") is not None)[0]
        self.coords.setText(format_map((float(xy[0]), float(xy[1])), meta.get("crs_name")))

    # ---------------------------------------------------------------------- the model

    def _existing_positives(self):
        pos = self.layer(ll.POSITIVES)
        return pos if pos is not None and KEY in pos.metadata else None

    def ensure_label_layers(self) -> bool:
        """Start (once) the labelling session of the chosen scene, restoring its autosave."""
        if self.model is not None:
            return True
        meta = self.scene_meta()
        if meta is None:
            dems = [ly for ly in self.viewer.layers if ly.metadata.get(KEY, {}).get("cloud")]
            why = (
                "labels need the scene raster: open the GeoTIFF the cloud belongs to "
                "(its DSM / nDSM are drawn on that scene's grid)"
                if dems
                else "open a scene (File ▸ Open) first"
            )
            self.say(why, error=True)
            return False
        frame = ll.LabelFrame.from_meta(meta)
        self.model = _model.LabelModel(frame, DEFAULT_CLASSES)
        adopted = self._existing_positives()
        if adopted is not None:  # labels already open (the sample data): adopt them
            from geodetect.plugin._writer import layers_frame

            self.model.load(layers_frame(self.viewer.layers))
        self.layers = LabelLayers(self.viewer, self.model, self.current_class)
        self.model.listeners.append(self._on_model_changed)
        for name in (ll.POSITIVES, ll.NEGATIVES, ll.DETECTIONS):
            self.layers.bind(name, "Control-Z", self.undo)
            self.layers.bind(name, "Control-Shift-Z", self.redo)
        self.layers.bind(ll.POSITIVES, "r", lambda: self.rotate_selected(5.0))
        self.layers.bind(ll.POSITIVES, "Shift-R", lambda: self.rotate_selected(-5.0))
        self.layers.bind(ll.POSITIVES, "f", self.flip_selected)
        self.layers.bind(ll.POSITIVES, "w", lambda: self.scale_width_selected(1.1))
        self.layers.bind(ll.POSITIVES, "Shift-W", lambda: self.scale_width_selected(1 / 1.1))
        self.layers.bind(ll.DETECTIONS, "a", self.accept_selected)
        self.layers.bind(ll.DETECTIONS, "x", self.reject_selected)
        side = _model.autosave_path(frame.scene_path) if frame.scene_path else None
        if adopted is None and side is not None and side.is_file():
            self.load_labels(side, ask=False)
            self.say(f"restored autosaved labels from {side.name}")
        self.model._undo.clear()  # the session starts here
        self._on_model_changed(self.model.state, {"classes"})
        return True

    def _on_model_changed(self, state, changed: set[str]) -> None:
        if "classes" in changed:
            self.label_tab.fill_classes(state.has_front)
        counts = self.model.counts()
        parts = [f"{c}: {n}" for c, n in counts["positives"].items()]
        self.label_tab.counts.setText(
            f"positives — {', '.join(parts) or 'none'}; negatives: {counts['negatives']}"
        )
        self.detect_tab.status.setText(f"{len(state.detections)} detections to review")
        self.label_tab.undo_button.setEnabled(self.model.can_undo)
        self.label_tab.redo_button.setEnabled(self.model.can_redo)
        if changed & {"positives", "negatives", "classes"}:
            self._autosave.start()

    def label_counts(self) -> dict:
        return self.model.counts() if self.model else {"positives": {}, "negatives": 0}

    def labels_frame(self):
        return self.model.labels_frame()

    def undo(self) -> bool:
        return bool(self.model and self.model.undo())

    def redo(self) -> bool:
        return bool(self.model and self.model.redo())

    # ---------------------------------------------------------------------- classes

    @property
    def has_front(self) -> dict[str, bool]:
        return self.model.state.has_front if self.model else dict(DEFAULT_CLASSES)

    def current_class(self) -> str:
        return self.label_tab.current_class() or next(iter(self.has_front), "object")

    def on_current_class(self) -> None:
        if self.layers is not None:
            self.layers.show(self.model.state, set())

    def add_class(self, name: str, front: bool = False) -> None:
        if self.ensure_label_layers() and self.model.add_class(name, front):
            self.label_tab.set_current_class(name.strip())
            self.label_tab.class_name.clear()

    def remove_class(self, name: str) -> None:
        if self.ensure_label_layers() and (why := self.model.remove_class(name)):
            self.say(why, error=True)

    def set_front(self, name: str, front: bool) -> None:
        if self.ensure_label_layers():
            self.model.set_front(name, front)

    # ---------------------------------------------------------------------- drawing

    def set_tool(self, tool: str) -> None:
        """pan | positive | negative | edit | review: exactly one takes the mouse."""
        if tool != "pan" and not self.ensure_label_layers():
            self.label_tab.show_tool("pan")
            return
        callbacks = self.viewer.mouse_drag_callbacks
        if tool == "positive" and self._drag_draw not in callbacks:
            callbacks.append(self._drag_draw)
        if tool != "positive" and self._drag_draw in callbacks:
            callbacks.remove(self._drag_draw)
        if self.layers is not None:
            self.layers.set_tool(tool)
        self.viewer.camera.mouse_pan = tool != "positive"  # after the layer modes (they set it)
        self.label_tab.show_tool(tool if tool != "review" else "edit")

    def _drag_draw(self, viewer, event):
        p0 = np.asarray(event.position, np.float64)[-2:]
        yield
        while event.type == "mouse_move":
            yield
        self.add_positive(p0, np.asarray(event.position, np.float64)[-2:])

    def add_positive(self, back_world, front_world, width=None, cls=None) -> int | None:
        """Add an oriented rectangle whose long axis runs from `back_world` to `front_world`
        (napari world (row, col)); width defaults to the width/length ratio. Its index."""
        if not self.ensure_label_layers():
            return None
        ends = world_to_map(np.array([back_world, front_world]), self.model.frame.georeferenced)
        if not np.hypot(*(ends[1] - ends[0])) > 0:
            return None
        box, heading = ll.drag_box(ends[0], ends[1], width, self.label_tab.width_ratio.value())
        return self.model.add_positive(box, heading, cls or self.current_class())

    def add_negative(self, polygon_world) -> None:
        """Add a negative polygon given in napari world (row, col) coordinates."""
        from shapely.geometry import Polygon

        if self.ensure_label_layers():
            xy = world_to_map(np.asarray(polygon_world, float), self.model.frame.georeferenced)
            self.model.add_negative(Polygon(xy))

    def _edit_selected(self, method: str, *args) -> None:
        if self.layers is not None:
            idx = self.layers.selected(ll.POSITIVES)
            getattr(self.model, method)(idx, *args)
            self.layer(ll.POSITIVES).selected_data = set(idx)

    def rotate_selected(self, degrees: float) -> None:
        self._edit_selected("rotate", degrees)

    def flip_selected(self) -> None:
        self._edit_selected("flip")

    def scale_width_selected(self, factor: float) -> None:
        self._edit_selected("scale_width", factor)

    # ---------------------------------------------------------------------- files

    def input_paths(self) -> list[str]:
        """The files open in the viewer through the reader: scenes and clouds (never written)."""
        metas = [ly.metadata.get(KEY, {}) for ly in self.viewer.layers]
        paths = [m.get("path") for m in metas] + [m.get("cloud") for m in metas]
        if self.model is not None:
            paths.append(self.model.frame.scene_path)
        return list(dict.fromkeys(str(p) for p in paths if p))

    def save_labels(self, path: str | Path | None = None) -> Path | None:
        """Write the label file (format by extension, atomically, in the scene's CRS); never
        over the scene or a cloud (the error shows in the dock)."""
        from geodetect.atomic import check_not_input
        from geodetect.labels import write_vector

        if not self.ensure_label_layers():
            return None
        if path is None:
            start = str(Path(self.model.frame.scene_path or ".").with_suffix("")) + "_labels.gpkg"
            path, _ = QFileDialog.getSaveFileName(self, "Save labels", start, _VECTORS)
            if not path:
                return None
        try:
            check_not_input(path, self.input_paths(), "save")
            out = Path(write_vector(self.model.labels_frame(), path))
        except FILE_ERRORS as exc:
            self.say(str(exc), error=True)
            return None
        self.say(f"saved {out.name}")
        return out

    def load_labels(self, path: str | Path | None = None, ask: bool = True) -> bool:
        """Replace the labels by a file's (reprojected to the scene); asks first when labels
        are drawn; undoable."""
        from geodetect.labels import read_labels

        if not self.ensure_label_layers():
            return False
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load labels", "", _VECTORS)
            if not path:
                return False
        if ask and not self.model.empty:
            n = sum(self.model.counts()["positives"].values()) + len(self.model.state.negatives)
            if not self.confirm(f"Replace the {n} labels drawn by {Path(path).name}?"):
                return False
        try:
            n_pos, n_neg = self.model.load(read_labels(path))
        except FILE_ERRORS as exc:
            self.say(str(exc), error=True)
            return False
        self.say(f"loaded {n_pos} positives, {n_neg} negatives")
        return True

    def autosave(self) -> Path | None:
        """Write the scene's autosave sidecar now; a failure shows in the dock."""
        self._autosave.stop()
        if self.model is None:
            return None
        try:
            out = self.model.autosave()
            self.autosave_error = None
        except FILE_ERRORS as exc:
            self.autosave_error = str(exc)
            out = None
        self._show_autosave_state()
        return out

    def _show_autosave_state(self) -> None:
        text = ""
        if self.autosave_error:
            text = f"⚠ autosave failed: {self.autosave_error}"
        elif self.model is not None and self.model.frame.scene_path:
            side = _model.autosave_path(self.model.frame.scene_path)
            text = f"autosaved {time.strftime('%H:%M:%S')}" if side.is_file() else ""
        elif (meta := self.scene_meta()) is not None:
            side = _model.autosave_path(meta["path"])
            if side.is_file():
                stamp = time.strftime("%H:%M", time.localtime(side.stat().st_mtime))
                text = f"an autosave from {stamp} waits: Start labelling restores it"
        self.label_tab.autosave_status.setText(text)

    # ---------------------------------------------------------------------- jobs

    @property
    def job(self) -> Job | None:
        return self.work.job

    @property
    def busy(self) -> bool:
        """A job runs, or a large set of shapes is still being written into a layer."""
        return self.work.job is not None or bool(self.layers and self.layers.busy)

    def show_samples(self, out_dir: str | Path | None = None) -> Job | None:
        return self.work.show_samples(out_dir)

    def start_training(self, out_dir=None, overrides: dict | None = None) -> Job | None:
        return self.work.start_training(out_dir, overrides)

    def run_detection(self, region: bool = False, model=None) -> Job | None:
        return self.work.run_detection(region, model)

    def cancel_job(self) -> None:
        self.work.cancel_job()

    def visible_region(self) -> dict | None:
        return self.work.visible_region()

    def show_detections(self, gdf) -> None:
        """Detections for review (coloured by score, heading arrows); undo brings back the
        previous ones."""
        if self.ensure_label_layers():
            n = self.model.set_detections(gdf)
            self.set_tool("review")
            self.say(f"{n} detections: select, then a = accept, x = reject")

    def accept_selected(self) -> int:
        """Selected detections become positives; one sitting on a positive merges into it."""
        if self.layers is None:
            return 0
        added, merged = self.model.accept(self.layers.selected(ll.DETECTIONS))
        if merged:
            self.say(f"accepted {added}; {merged} already labelled (merged)")
        return added + merged

    def reject_selected(self) -> int:
        """Selected detections become hard negatives (their rectangle)."""
        return self.model.reject(self.layers.selected(ll.DETECTIONS)) if self.layers else 0


_VECTORS = "Vector (*.gpkg *.geojson *.shp)"
