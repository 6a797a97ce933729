"""The geodetect dock widget: label positives and negatives, train, detect and review.

Thin over the core: boxes through `geodetect.geometry`, files through `geodetect.labels`,
training through `geodetect.train.train`, detection through `geodetect.infer`. Keys on the
`positives` layer: r / Shift-R rotate ±5°, f flips the front, w / Shift-W widen / narrow;
on the `detections` layer: a accepts (→ positive), x rejects (→ hard negative).
"""

from __future__ import annotations

import inspect
import math
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from geodetect.errors import GeodetectError
from geodetect.plugin import _label_layer as ll
from geodetect.plugin._coords import KEY, format_map, world_to_map

SCENE_KINDS = ("scene", "dsm", "ndsm")
DEFAULT_CLASSES = {"vehicle": True, "building": False}
AUTOSAVE_SUFFIX = ".geodetect-autosave.gpkg"
AUTOSAVE_DELAY_MS = 500
UNDO_DEPTH = 100


class Cancelled(Exception):
    """Raised inside the training callback to stop a run the user cancelled."""


def autosave_path(scene_path: str | Path) -> Path:
    """The crash-safety sidecar of a scene: `<scene>.geodetect-autosave.gpkg`."""
    p = Path(scene_path)
    return p.with_name(p.name + AUTOSAVE_SUFFIX)


class GeodetectWidget(QWidget):
    """One dock: Label / Train / Detect tabs and a map-coordinate readout."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.frame: ll.LabelFrame | None = None
        self.has_front: dict[str, bool] = dict(DEFAULT_CLASSES)
        self._history: list[tuple] = []
        self._quiet = False  # set while the widget itself edits layers
        self._autosave = QTimer(self)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave.timeout.connect(self.autosave)
        self.last_error: str | None = None
        self.model_path: Path | None = None
        self.train_worker = None
        self.detect_worker = None
        self._train_state: dict = {}
        self._cancel = threading.Event()
        self._poll = QTimer(self)
        self._poll.setInterval(200)
        self._poll.timeout.connect(self._show_train_state)

        tabs = QTabWidget()
        tabs.addTab(self._label_tab(), "Label")
        tabs.addTab(self._train_tab(), "Train")
        tabs.addTab(self._detect_tab(), "Detect")
        self.coords = QLabel("move over a layer to see map coordinates")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs)
        layout.addWidget(self.coords)
        layout.addWidget(self.message)
        layout.addStretch(1)

        self.viewer.cursor.events.position.connect(self._on_cursor)
        self.viewer.layers.events.inserted.connect(self._refresh_scenes)
        self.viewer.layers.events.removed.connect(self._refresh_scenes)
        self._refresh_scenes()
        self._adopt_existing_layers()

    # -------------------------------------------------------------------------- UI

    def _label_tab(self) -> QWidget:
        w = QWidget()
        form = QFormLayout(w)
        self.scene_box = QComboBox()
        form.addRow("scene", self.scene_box)
        start = QPushButton("Start labelling this scene")
        start.clicked.connect(lambda: self.ensure_label_layers())
        form.addRow(start)

        self.class_list = QListWidget()
        self.class_list.setToolTip("checked = the class has a front (heading)")
        self.class_list.itemChanged.connect(self._on_class_item)
        self.class_list.currentRowChanged.connect(lambda _: self._on_current_class())
        form.addRow("classes (✓ = front)", self.class_list)
        row = QHBoxLayout()
        self.class_name = QLineEdit()
        self.class_name.setPlaceholderText("new class")
        add, remove = QPushButton("Add"), QPushButton("Remove")
        add.clicked.connect(lambda: self.add_class(self.class_name.text()))
        remove.clicked.connect(self._remove_current_class)
        for x in (self.class_name, add, remove):
            row.addWidget(x)
        form.addRow(row)
        self._fill_classes()

        self.draw_button = QPushButton("Draw positive: drag along the object (front last)")
        self.draw_button.setCheckable(True)
        self.draw_button.toggled.connect(self.set_draw_mode)
        form.addRow(self.draw_button)
        self.width_ratio = QDoubleSpinBox()
        self.width_ratio.setRange(0.05, 1.0)
        self.width_ratio.setSingleStep(0.05)
        self.width_ratio.setValue(0.45)
        form.addRow("width / length", self.width_ratio)
        neg = QPushButton("Draw negative polygon")
        neg.clicked.connect(self._draw_negative)
        undo = QPushButton("Undo")
        undo.clicked.connect(self.undo)
        row = QHBoxLayout()
        row.addWidget(neg)
        row.addWidget(undo)
        form.addRow(row)
        self.counts = QLabel("no labels")
        form.addRow(self.counts)
        row = QHBoxLayout()
        save, load, samples = QPushButton("Save…"), QPushButton("Load…"), QPushButton("Samples")
        save.clicked.connect(lambda: self.save_labels())
        load.clicked.connect(lambda: self.load_labels())
        samples.clicked.connect(lambda: self.show_samples())
        for x in (save, load, samples):
            row.addWidget(x)
        form.addRow(row)
        return w

    def _train_tab(self) -> QWidget:
        w = QWidget()
        form = QFormLayout(w)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(20)
        form.addRow("epochs", self.epochs)
        self.train_out = QLineEdit()
        self.train_out.setPlaceholderText("<scene folder>/geodetect_model")
        form.addRow("output folder", self.train_out)
        self.use_cloud = QCheckBox("use the point cloud (elevation channel)")
        form.addRow(self.use_cloud)
        row = QHBoxLayout()
        self.train_button, self.cancel_button = QPushButton("Train"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.train_button.clicked.connect(lambda: self.start_training())
        self.cancel_button.clicked.connect(self.cancel_training)
        row.addWidget(self.train_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.train_progress = QProgressBar()
        form.addRow(self.train_progress)
        self.loss_label = QLabel("")
        form.addRow(self.loss_label)
        return w

    def _detect_tab(self) -> QWidget:
        w = QWidget()
        form = QFormLayout(w)
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model.pt (filled in after training)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_model)
        row = QHBoxLayout()
        row.addWidget(self.model_edit)
        row.addWidget(browse)
        form.addRow("model", row)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.3)
        form.addRow("score threshold", self.threshold)
        row = QHBoxLayout()
        scene, view = QPushButton("Detect in scene"), QPushButton("Detect in view")
        scene.clicked.connect(lambda: self.run_detection(region=False))
        view.clicked.connect(lambda: self.run_detection(region=True))
        row.addWidget(scene)
        row.addWidget(view)
        form.addRow(row)
        row = QHBoxLayout()
        acc, rej = QPushButton("Accept (a)"), QPushButton("Reject (x)")
        acc.clicked.connect(lambda: self.accept_selected())
        rej.clicked.connect(lambda: self.reject_selected())
        row.addWidget(acc)
        row.addWidget(rej)
        form.addRow(row)
        self.detect_label = QLabel("")
        form.addRow(self.detect_label)
        return w

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setText(("⚠ " if error else "") + text)
        if error:
            self.last_error = text

    # -------------------------------------------------------------------------- scenes, cursor

    def scene_layers(self) -> list:
        """Image layers the readers made (scenes, DSMs, nDSMs), in viewer order."""
        return [
            ly for ly in self.viewer.layers if ly.metadata.get(KEY, {}).get("kind") in SCENE_KINDS
        ]

    def _refresh_scenes(self, *_: object) -> None:
        current = self.scene_box.currentText()
        names = [ly.name for ly in self.scene_layers()]
        self.scene_box.blockSignals(True)
        self.scene_box.clear()
        self.scene_box.addItems(names)
        scenes = [ly.name for ly in self.scene_layers() if ly.metadata[KEY]["kind"] == "scene"]
        if current in names:
            self.scene_box.setCurrentText(current)
        elif scenes:  # label on the image by default; DSMs line up anyway
            self.scene_box.setCurrentText(scenes[0])
        self.scene_box.blockSignals(False)

    def _scene_meta(self) -> dict | None:
        layers = {ly.name: ly for ly in self.scene_layers()}
        name = self.scene_box.currentText()
        if name in layers:
            return layers[name].metadata[KEY]
        scenes = [ly for ly in layers.values() if ly.metadata[KEY]["kind"] == "scene"]
        first = scenes[0] if scenes else next(iter(layers.values()), None)
        return first.metadata[KEY] if first is not None else None

    def _on_cursor(self, event=None) -> None:
        meta = self.frame.meta("x")[KEY] if self.frame else self._scene_meta()
        pos = np.asarray(self.viewer.cursor.position, np.float64)[-2:]
        if meta is None or pos.size < 2:
            return
        xy = world_to_map(pos[None], meta.get("crs") is not None)[0]
        name = meta.get("crs_name") or _crs_name(meta.get("crs"))
        self.coords.setText(format_map((float(xy[0]), float(xy[1])), name))

    # -------------------------------------------------------------------------- label layers

    def layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _adopt_existing_layers(self) -> None:
        """Take over label layers already in the viewer (e.g. from the sample data)."""
        pos = self.layer(ll.POSITIVES)
        if pos is not None and KEY in pos.metadata:
            meta = pos.metadata[KEY]
            self.frame = ll.LabelFrame(
                meta["crs"] is not None,
                meta["crs"],
                tuple(meta["translate"]),
                meta.get("image"),
                meta.get("path"),
            )
            if "class" in pos.features:
                for c, h in zip(pos.features["class"], pos.features["heading_deg"], strict=True):
                    self.has_front[str(c)] = self.has_front.get(str(c), False) or np.isfinite(h)
                self._fill_classes()
            self.ensure_label_layers()

    def ensure_label_layers(self) -> bool:
        """Create (or reuse) the positives / negatives / headings layers for the chosen scene."""
        if self.frame is None:
            meta = self._scene_meta()
            if meta is None:
                self._say("open a scene (File ▸ Open) first", error=True)
                return False
            self.frame = ll.LabelFrame.from_meta(meta)
        f = self.frame
        pos = self.layer(ll.POSITIVES)
        if pos is None:
            pos = self.viewer.add_shapes(
                None,
                ndim=2,
                name=ll.POSITIVES,
                shape_type="polygon",
                translate=f.translate,
                metadata=f.meta(ll.POSITIVES),
                features=_empty_positive_features(),
                face_color=[1, 1, 0, 0.15],
                edge_color="yellow",
                edge_width=0.3,
            )
        neg = self.layer(ll.NEGATIVES)
        if neg is None:
            neg = self.viewer.add_shapes(
                None,
                ndim=2,
                name=ll.NEGATIVES,
                shape_type="polygon",
                translate=f.translate,
                metadata=f.meta(ll.NEGATIVES),
                features=pd.DataFrame({"wkb": pd.Series([], dtype=object)}),
                face_color=[1, 0, 0, 0.2],
                edge_color="red",
                edge_width=0.3,
            )
        if self.layer(ll.HEADINGS) is None:
            self.viewer.add_vectors(
                np.zeros((0, 2, 2)),
                name=ll.HEADINGS,
                translate=f.translate,
                edge_color="orange",
                edge_width=0.4,
                vector_style="arrow",
            )
        if not getattr(pos, "_geodetect_wired", False):
            for layer in (pos, neg):
                layer.events.data.connect(self._on_labels_changed)
                layer._geodetect_wired = True
            self._bind_label_keys(pos)
            self._restore_autosave()
        self._on_current_class()
        self._history = [self._snapshot()]
        self._update_derived()
        return True

    def _restore_autosave(self) -> None:
        """After a crash the sidecar holds the last labels: load it into empty layers."""
        if not self.frame or not self.frame.scene_path:
            return
        side = autosave_path(self.frame.scene_path)
        pos, neg = self.layer(ll.POSITIVES), self.layer(ll.NEGATIVES)
        if side.is_file() and len(pos.data) == 0 and len(neg.data) == 0:
            self.load_labels(side)
            self._say(f"restored autosaved labels from {side.name}")

    def _bind_label_keys(self, pos) -> None:
        def bind(layer, key, func):
            layer.bind_key(key, lambda _layer: func(), overwrite=True)

        bind(pos, "r", lambda: self.rotate_selected(5.0))
        bind(pos, "Shift-R", lambda: self.rotate_selected(-5.0))
        bind(pos, "f", self.flip_selected)
        bind(pos, "w", lambda: self.scale_width_selected(1.1))
        bind(pos, "Shift-W", lambda: self.scale_width_selected(1 / 1.1))

    def _snapshot(self) -> tuple:
        pos, neg = self.layer(ll.POSITIVES), self.layer(ll.NEGATIVES)
        return (
            [np.array(d) for d in pos.data],
            pos.features.copy(),
            [np.array(d) for d in neg.data],
            neg.features.copy(),
        )

    def _on_labels_changed(self, event=None) -> None:
        if self._quiet:
            return
        if event is not None and getattr(event, "action", None) in (
            "adding",
            "removing",
            "changing",
        ):
            return  # napari announces before and after; act once, after
        self._normalise_positives()
        snap = self._snapshot()
        self._history.append(snap)
        del self._history[:-UNDO_DEPTH]
        self._update_derived()
        self._autosave.start()

    def _normalise_positives(self) -> None:
        """New or edited positives become clean 4-corner rectangles with class and heading."""
        pos = self.layer(ll.POSITIVES)
        if len(pos.data) == 0:
            return
        feats = pos.features.copy()
        if "class" not in feats:
            feats["class"] = self.current_class()
        feats["class"] = [
            c if isinstance(c, str) and c else self.current_class() for c in feats["class"]
        ]
        shapes = [self._rect4(np.asarray(d)[:, -2:]) for d in pos.data]
        boxes, heads = ll.positive_boxes(shapes, feats, self.frame)
        fronts = np.array([self.has_front.get(c, False) for c in feats["class"]], bool)
        heads = np.where(fronts, heads, np.nan)
        feats = ll.with_boxes(feats, boxes, heads)
        new = ll.box_shapes(boxes, heads, self.frame)
        changed = any(
            np.asarray(d).shape != n.shape or not np.allclose(np.asarray(d)[:, -2:], n, atol=1e-9)
            for d, n in zip(pos.data, new, strict=True)
        ) or list(pos.shape_type) != ["polygon"] * len(new)
        self._set_shapes(pos, new if changed else None, feats)

    def _rect4(self, vertices: np.ndarray) -> np.ndarray:
        """The shape's own 4 corners when they form a rectangle, else its minimum rotated one."""
        import shapely
        from shapely.geometry import MultiPoint

        if len(vertices) == 4:
            try:
                ll.shape_boxes([vertices], self.frame)
                return vertices
            except ValueError:
                pass
        rect = shapely.minimum_rotated_rectangle(MultiPoint(vertices[:, ::-1]))
        coords = np.asarray(getattr(rect, "exterior", rect).coords)[:4, ::-1]
        if len(coords) < 4:  # degenerate (a click): a tiny square
            c = vertices.mean(axis=0)
            coords = c + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.5, -0.5]])
        return coords

    def _set_shapes(self, layer, data: list | None, features: pd.DataFrame | None) -> None:
        """Replace a layer's shapes and/or features without re-entering the change handler."""
        self._quiet = True
        try:
            selected = set(layer.selected_data)
            if data is not None:
                layer.selected_data = set()
                layer.data = []
                if len(data):
                    layer.add_polygons(data)
            if features is not None:
                layer.features = features.reset_index(drop=True)
            layer.selected_data = {i for i in selected if i < len(layer.data)}
        finally:
            self._quiet = False

    def _update_derived(self) -> None:
        """Heading arrows and per-class counts."""
        pos = self.layer(ll.POSITIVES)
        if pos is None:
            return
        vec = self.layer(ll.HEADINGS)
        if vec is not None:
            if len(pos.data):
                boxes, heads = ll.positive_boxes(list(pos.data), pos.features, self.frame)
                vec.data = ll.heading_vectors(boxes, heads, self.frame)
            else:
                vec.data = np.zeros((0, 2, 2))
        counts = self.label_counts()
        parts = [f"{c}: {n}" for c, n in counts["positives"].items()]
        self.counts.setText(
            f"positives — {', '.join(parts) or 'none'}; negatives: {counts['negatives']}"
        )

    def label_counts(self) -> dict:
        """{"positives": {class: n}, "negatives": n}."""
        pos, neg = self.layer(ll.POSITIVES), self.layer(ll.NEGATIVES)
        per: dict[str, int] = {}
        if pos is not None and len(pos.data):
            for c in pos.features["class"]:
                per[str(c)] = per.get(str(c), 0) + 1
        return {"positives": per, "negatives": 0 if neg is None else len(neg.data)}

    def undo(self) -> None:
        """Go back one labelling step (draw, delete, edit, rotate, accept, reject…)."""
        if len(self._history) < 2:
            return
        self._history.pop()
        pos_data, feats, neg_data, neg_feats = self._history[-1]
        self._set_shapes(self.layer(ll.POSITIVES), pos_data, feats)
        self._set_shapes(self.layer(ll.NEGATIVES), neg_data, neg_feats)
        self._update_derived()
        self._autosave.start()

    # -------------------------------------------------------------------------- classes

    def _fill_classes(self) -> None:
        current = self.current_class() if hasattr(self, "class_list") else None
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for name, front in self.has_front.items():
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if front else Qt.Unchecked)
            self.class_list.addItem(item)
        names = list(self.has_front)
        self.class_list.setCurrentRow(names.index(current) if current in names else 0)
        self.class_list.blockSignals(False)

    def current_class(self) -> str:
        item = self.class_list.currentItem() if self.class_list.count() else None
        return item.text() if item is not None else next(iter(self.has_front), "object")

    def set_current_class(self, name: str) -> None:
        names = list(self.has_front)
        if name not in names:
            self.add_class(name)
            names = list(self.has_front)
        self.class_list.setCurrentRow(names.index(name))

    def add_class(self, name: str, front: bool = False) -> None:
        name = name.strip()
        if not name or name in self.has_front:
            return
        self.has_front[name] = front
        self._fill_classes()
        self.class_list.setCurrentRow(len(self.has_front) - 1)
        self.class_name.clear()

    def set_front(self, name: str, front: bool) -> None:
        self.has_front[name] = front
        self._fill_classes()
        if self.layer(ll.POSITIVES) is not None:
            self._on_labels_changed()

    def _remove_current_class(self) -> None:
        name = self.current_class()
        if len(self.has_front) > 1 and name not in self.label_counts()["positives"]:
            del self.has_front[name]
            self._fill_classes()
        else:
            self._say(f"'{name}' still has positives; delete them first", error=True)

    def _on_class_item(self, item: QListWidgetItem) -> None:
        self.set_front(item.text(), item.checkState() == Qt.Checked)

    def _on_current_class(self) -> None:
        pos = self.layer(ll.POSITIVES)
        if pos is not None:
            defaults = {c: np.nan for c in ["heading_deg", *ll.BOX_COLS]}
            pos.feature_defaults = {"class": self.current_class(), **defaults}

    # -------------------------------------------------------------------------- drawing

    def set_draw_mode(self, on: bool) -> None:
        """Drag along an object's long axis (back → front) to add a positive."""
        if on and not self.ensure_label_layers():
            self.draw_button.setChecked(False)
            return
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self._drag_draw not in callbacks:
            callbacks.append(self._drag_draw)
        if not on and self._drag_draw in callbacks:
            callbacks.remove(self._drag_draw)
        self.viewer.camera.mouse_pan = not on
        if self.draw_button.isChecked() != on:
            self.draw_button.setChecked(on)

    def _drag_draw(self, viewer, event):
        p0 = np.asarray(event.position, np.float64)[-2:]
        yield
        while event.type == "mouse_move":
            yield
        p1 = np.asarray(event.position, np.float64)[-2:]
        self.add_positive(p0, p1)

    def add_positive(
        self, back_world, front_world, width: float | None = None, cls: str | None = None
    ) -> int | None:
        """Add an oriented rectangle whose long axis runs from `back_world` to `front_world`
        (napari world (row, col)); width defaults to the width/length ratio. Returns its index."""
        if not self.ensure_label_layers():
            return None
        f = self.frame
        (bx, by), (fx, fy) = world_to_map(np.array([back_world, front_world]), f.georeferenced)
        d = np.asarray(front_world, np.float64) - np.asarray(back_world, np.float64)
        length = float(np.hypot(*d))
        if length <= 0:
            return None
        heading = math.degrees(math.atan2(d[1], -d[0])) % 360.0  # north = world −row
        cls = cls or self.current_class()
        w = float(width) if width is not None else length * self.width_ratio.value()
        box = np.array([[(bx + fx) / 2, (by + fy) / 2, max(length, w), min(length, w), 0.0]])
        box[0, 4] = (heading if length >= w else heading + 90.0) % 180.0
        head = heading if self.has_front.get(cls, False) else np.nan
        shape = ll.box_shapes(box, np.array([head]), f)[0]
        pos = self.layer(ll.POSITIVES)
        new = ll.with_boxes(pd.DataFrame({"class": [cls]}), box, np.array([head]))
        feats = pd.concat([pos.features, new], ignore_index=True)
        self._set_shapes(pos, [*map(np.asarray, pos.data), shape], feats)
        self._on_labels_changed()
        return len(pos.data) - 1

    def add_negative(self, polygon_world: np.ndarray) -> None:
        """Add a negative polygon given in napari world (row, col) coordinates."""
        if not self.ensure_label_layers():
            return
        from shapely.geometry import Polygon

        neg = self.layer(ll.NEGATIVES)
        xy = world_to_map(np.asarray(polygon_world, np.float64), self.frame.georeferenced)
        shapes, new = ll.negative_shapes([Polygon(xy)], self.frame)
        feats = pd.concat([neg.features, new], ignore_index=True)
        self._set_shapes(neg, [*map(np.asarray, neg.data), *shapes], feats)
        self._on_labels_changed()

    def _draw_negative(self) -> None:
        if self.ensure_label_layers():
            self.set_draw_mode(False)
            neg = self.layer(ll.NEGATIVES)
            self.viewer.layers.selection.active = neg
            neg.mode = "add_polygon"

    def _edit_selected(self, edit) -> None:
        """Apply `edit(boxes, headings) -> (boxes, headings)` to the selected positives."""
        pos = self.layer(ll.POSITIVES)
        if pos is None or not pos.selected_data:
            return
        idx = sorted(pos.selected_data)
        data = [np.asarray(d)[:, -2:] for d in pos.data]
        feats = pos.features.reset_index(drop=True)
        boxes, heads = ll.positive_boxes([data[i] for i in idx], feats.iloc[idx], self.frame)
        fronts = np.array([self.has_front.get(c, False) for c in feats["class"].iloc[idx]])
        heads = np.where(fronts, heads, np.nan)
        boxes, heads = edit(boxes.copy(), heads.copy())
        for k, shape in zip(idx, ll.box_shapes(boxes, heads, self.frame), strict=True):
            data[k] = shape
        feats.loc[idx, "heading_deg"] = heads
        feats.loc[idx, ll.BOX_COLS] = boxes
        self._set_shapes(pos, data, feats)
        pos.selected_data = set(idx)
        self._on_labels_changed()

    def rotate_selected(self, degrees: float) -> None:
        """Rotate the selected positives clockwise by `degrees` about their centres."""

        def edit(b, h):
            b[:, 4] = (b[:, 4] + degrees) % 180.0
            return b, (h + degrees) % 360.0

        self._edit_selected(edit)

    def flip_selected(self) -> None:
        """Turn the selected positives' front to the other end."""
        self._edit_selected(lambda b, h: (b, (h + 180.0) % 360.0))

    def scale_width_selected(self, factor: float) -> None:
        """Widen (factor > 1) or narrow the selected positives, never past their length."""

        def edit(b, h):
            b[:, 3] = np.minimum(b[:, 3] * factor, b[:, 2])
            return b, h

        self._edit_selected(edit)

    # -------------------------------------------------------------------------- files

    def labels_frame(self):
        """The current labels as the contract's GeoDataFrame (scene CRS)."""
        pos, neg = self.layer(ll.POSITIVES), self.layer(ll.NEGATIVES)
        return ll.layers_to_frame(
            list(pos.data), pos.features, list(neg.data), self.frame, self.has_front, neg.features
        )

    def save_labels(self, path: str | Path | None = None) -> Path | None:
        """Write the label file (format by extension, atomically, in the scene's CRS)."""
        from geodetect.labels import write_vector

        if not self.ensure_label_layers():
            return None
        if path is None:
            start = str(Path(self.frame.scene_path or ".").with_suffix("")) + "_labels.gpkg"
            path, _ = QFileDialog.getSaveFileName(
                self, "Save labels", start, "Vector (*.gpkg *.geojson *.shp)"
            )
            if not path:
                return None
        try:
            out = Path(write_vector(self.labels_frame(), path))
        except (GeodetectError, OSError, ValueError) as exc:
            self._say(str(exc), error=True)
            return None
        self._say(f"saved {out.name}")
        return out

    def load_labels(self, path: str | Path | None = None) -> bool:
        """Replace the label layers by a label file's contents (reprojected to the scene)."""
        from geodetect.labels import read_labels

        if not self.ensure_label_layers():
            return False
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Load labels", "", "Vector (*.gpkg *.geojson *.shp)"
            )
            if not path:
                return False
        try:
            gdf = read_labels(path)
            pos_data, feats, neg_data, neg_feats, fronts = ll.frame_to_layers(gdf, self.frame)
        except (GeodetectError, OSError, ValueError) as exc:
            self._say(str(exc), error=True)
            return False
        for c, front in fronts.items():
            self.has_front[c] = front or (self.has_front.get(c, False) and not len(feats))
        self._fill_classes()
        self._set_shapes(self.layer(ll.POSITIVES), pos_data, feats)
        self._set_shapes(self.layer(ll.NEGATIVES), neg_data, neg_feats)
        self._on_labels_changed()
        self._say(f"loaded {len(pos_data)} positives, {len(neg_data)} negatives")
        return True

    def autosave(self) -> Path | None:
        """Write the sidecar `<scene>.geodetect-autosave.gpkg` (atomic), or drop it when empty."""
        from geodetect.labels import write_vector

        self._autosave.stop()
        if self.frame is None or not self.frame.scene_path or self.layer(ll.POSITIVES) is None:
            return None
        side = autosave_path(self.frame.scene_path)
        try:
            gdf = self.labels_frame()
            if len(gdf) == 0:
                side.unlink(missing_ok=True)
                return None
            return Path(write_vector(gdf, side))
        except (GeodetectError, OSError, ValueError) as exc:
            self._say(f"autosave failed: {exc}", error=True)
            return None

    # -------------------------------------------------------------------------- samples

    def show_samples(self, out_dir: str | Path | None = None):
        """Gallery of the normalised positive and negative chips the trainer will see."""
        from geodetect.plugin._gallery import samples_gallery

        if not self.ensure_label_layers():
            return None
        out = Path(out_dir or tempfile.mkdtemp(prefix="geodetect-samples-"))
        labels = self.save_labels(out / "labels.gpkg")
        if labels is None:
            return None
        try:
            data, kwargs = samples_gallery(self._train_images(), labels, self._train_clouds(), out)
        except (GeodetectError, OSError, ValueError) as exc:
            self._say(str(exc), error=True)
            return None
        return self.viewer.add_image(data, **kwargs)

    # -------------------------------------------------------------------------- training

    def _train_images(self) -> list[str]:
        meta = self._scene_meta()
        path = (self.frame.scene_path if self.frame else None) or (meta or {}).get("path")
        return [path] if path else []

    def _train_clouds(self) -> list[str] | None:
        if not self.use_cloud.isChecked():
            return None
        clouds = [
            ly.metadata[KEY]["cloud"]
            for ly in self.viewer.layers
            if ly.metadata.get(KEY, {}).get("cloud")
        ]
        return clouds[:1] or None

    def start_training(self, out_dir: str | Path | None = None, config=None):
        """Save the labels and run `geodetect train` in a background worker."""
        from napari.qt.threading import create_worker

        from geodetect.config import load_config

        if self.train_worker is not None:
            self._say("a training run is already going", error=True)
            return None
        if not self.ensure_label_layers():
            return None
        images = self._train_images()
        out = Path(out_dir or self.train_out.text() or Path(images[0]).parent / "geodetect_model")
        out.mkdir(parents=True, exist_ok=True)
        labels = self.save_labels(out / "labels.gpkg")
        if labels is None:
            return None
        try:
            config = config or load_config(None, {"train.epochs": self.epochs.value()})
        except GeodetectError as exc:
            self._say(str(exc), error=True)
            return None
        self._cancel.clear()
        self._train_state = {}
        worker = create_worker(
            _run_training,
            images,
            labels,
            self._train_clouds(),
            config,
            out,
            self._train_callback,
            self._cancel,
        )
        worker.returned.connect(self._training_done)
        worker.errored.connect(self._training_failed)
        worker.finished.connect(self._training_finished)
        self.train_worker = worker
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.train_progress.setRange(0, 0)
        self._poll.start()
        self._say("training…")
        worker.start()
        return worker

    def _train_callback(self, state: dict) -> None:
        """Called from the training thread: record the state; stop if cancelled."""
        self._train_state = dict(state)
        if self._cancel.is_set():
            raise Cancelled

    def _show_train_state(self) -> None:
        s = self._train_state
        if not s:
            return
        total = int(s.get("total_steps") or s.get("epochs") or 0)
        done = int(s.get("step") or s.get("epoch") or 0)
        if total:
            self.train_progress.setRange(0, total)
            self.train_progress.setValue(min(done, total))
        loss = s.get("loss")
        parts = [f"epoch {s['epoch']}" if "epoch" in s else ""]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if s.get("val_loss") is not None:
            parts.append(f"val {float(s['val_loss']):.4f}")
        self.loss_label.setText("  ".join(p for p in parts if p))

    def cancel_training(self) -> None:
        """Ask the run to stop at its next step; the UI stays responsive meanwhile."""
        self._cancel.set()
        self._say("cancelling…")

    def _training_done(self, model: Path | None) -> None:
        if model is None:
            self._say("training cancelled")
            return
        self.model_path = Path(model)
        self.model_edit.setText(str(model))
        self._say(f"trained {Path(model).name}; now Detect (tab) and review")

    def _training_failed(self, exc: BaseException) -> None:
        self._say(f"training failed: {exc}", error=True)

    def _training_finished(self) -> None:
        if self._cancel.is_set():
            self._say("training cancelled")
        self._poll.stop()
        self._show_train_state()
        self.train_progress.setRange(0, 1)
        self.train_progress.setValue(1)
        self.train_worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # -------------------------------------------------------------------------- detection

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model", "", "geodetect model (*.pt)")
        if path:
            self.model_edit.setText(path)

    def visible_box(self) -> tuple[float, float, float, float]:
        """Map-frame (left, bottom, right, top) of the canvas' visible region."""
        h, w = self.viewer._canvas_size
        centre = np.asarray(self.viewer.camera.center, np.float64)[-2:]
        half = np.array([h, w], np.float64) / 2 / self.viewer.camera.zoom
        xy = world_to_map(np.array([centre - half, centre + half]), self.frame.georeferenced)
        return (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())

    def run_detection(self, region: bool = False, model: str | Path | None = None):
        """Detect over the scene (or the visible region) in a background worker."""
        from napari.qt.threading import create_worker

        model = model or self.model_edit.text() or self.model_path
        if not model:
            self._say("train or choose a model first", error=True)
            return None
        if not self.ensure_label_layers():
            return None
        box = self.visible_box() if region else None
        worker = create_worker(
            _run_detection,
            str(model),
            self._train_images()[0],
            self._train_clouds(),
            float(self.threshold.value()),
            box,
        )
        worker.returned.connect(self.show_detections)
        worker.errored.connect(lambda e: self._say(f"detection failed: {e}", error=True))
        worker.finished.connect(lambda: setattr(self, "detect_worker", None))
        self.detect_worker = worker
        self._say("detecting…")
        worker.start()
        return worker

    def show_detections(self, gdf) -> None:
        """Put detections in the `detections` layer, edges coloured by score, with arrows."""
        if not self.ensure_label_layers():
            return
        data, feats = ll.detections_to_layers(gdf, self.frame)
        det = self.layer(ll.DETECTIONS)
        if det is None:
            det = self.viewer.add_shapes(
                None,
                ndim=2,
                name=ll.DETECTIONS,
                translate=self.frame.translate,
                metadata=self.frame.meta(ll.DETECTIONS),
                face_color=[0, 0, 0, 0],
                edge_width=0.3,
                features=ll.with_boxes(
                    pd.DataFrame({"class": pd.Series([], dtype=object), "score": np.zeros(0)}),
                    np.zeros((0, 5)),
                    np.zeros(0),
                ),
            )
            det.bind_key("a", lambda _l: self.accept_selected(), overwrite=True)
            det.bind_key("x", lambda _l: self.reject_selected(), overwrite=True)
        self._set_detections(data, feats)
        self.viewer.layers.selection.active = det
        det.mode = "select"
        self._say(f"{len(data)} detections: select, then a = accept, x = reject")

    def _set_detections(self, data: list, feats: pd.DataFrame) -> None:
        det = self.layer(ll.DETECTIONS)
        self._set_shapes(det, data, feats)
        if len(data):
            det.edge_color = "score"
            det.edge_colormap = "plasma"
            det.edge_contrast_limits = (0.0, 1.0)
            det.refresh_colors()
        vec = self.layer(ll.DETECTION_HEADINGS)
        arrows = np.zeros((0, 2, 2))
        if len(data):
            boxes, heads = ll.positive_boxes(data, feats, self.frame)
            arrows = ll.heading_vectors(boxes, heads, self.frame)
        if vec is None:
            self.viewer.add_vectors(
                arrows,
                name=ll.DETECTION_HEADINGS,
                translate=self.frame.translate,
                edge_color="cyan",
                edge_width=0.4,
                vector_style="arrow",
            )
        else:
            vec.data = arrows
        self.detect_label.setText(f"{len(data)} detections to review")

    def _take_selected(self) -> tuple[list, pd.DataFrame]:
        """Remove the selected detections and return them (shapes, features)."""
        det = self.layer(ll.DETECTIONS)
        if det is None or not det.selected_data:
            return [], pd.DataFrame()
        idx = sorted(det.selected_data)
        data = [np.asarray(d)[:, -2:] for d in det.data]
        feats = det.features.reset_index(drop=True)
        taken = [data[i] for i in idx]
        keep = [i for i in range(len(data)) if i not in set(idx)]
        det.selected_data = set()
        self._set_detections([data[i] for i in keep], feats.iloc[keep])
        return taken, feats.iloc[idx].reset_index(drop=True)

    def accept_selected(self) -> int:
        """Selected detections become positives of their class (heading kept)."""
        shapes, feats = self._take_selected()
        if not shapes:
            return 0
        pos = self.layer(ll.POSITIVES)
        for c, h in zip(feats["class"], feats["heading_deg"], strict=True):
            if c not in self.has_front:
                self.has_front[str(c)] = bool(np.isfinite(h))
                self._fill_classes()
        boxes, heads = ll.positive_boxes(shapes, feats, self.frame)
        fronts = np.array([self.has_front.get(c, False) for c in feats["class"]], bool)
        heads = np.where(fronts, heads, np.nan)
        new = ll.with_boxes(pd.DataFrame({"class": list(feats["class"])}), boxes, heads)
        shapes = ll.box_shapes(boxes, heads, self.frame)
        all_feats = pd.concat([pos.features, new], ignore_index=True)
        self._set_shapes(pos, [*map(np.asarray, pos.data), *shapes], all_feats)
        self._on_labels_changed()
        return len(shapes)

    def reject_selected(self) -> int:
        """Selected detections become hard negatives (their rectangle, as a polygon)."""
        from shapely.geometry import Polygon

        shapes, feats = self._take_selected()
        if not shapes:
            return 0
        boxes, heads = ll.positive_boxes(shapes, feats, self.frame)
        corners = ll.rectangle_corners(boxes, heads, self.frame)
        new_shapes, new = ll.negative_shapes([Polygon(c) for c in corners], self.frame)
        neg = self.layer(ll.NEGATIVES)
        all_feats = pd.concat([neg.features, new], ignore_index=True)
        self._set_shapes(neg, [*map(np.asarray, neg.data), *new_shapes], all_feats)
        self._on_labels_changed()
        return len(shapes)


# ------------------------------------------------------------------------------ workers


def _empty_positive_features() -> pd.DataFrame:
    empty = pd.DataFrame({"class": pd.Series([], dtype=object)})
    return ll.with_boxes(empty, np.zeros((0, 5)), np.zeros(0))


def _crs_name(wkt: str | None) -> str | None:
    if wkt is None:
        return None
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt).to_string()


def _run_training(images, labels, clouds, config, out, callback, cancel) -> Path | None:
    """Background: `geodetect.train.train` with a progress callback that can cancel it."""
    from geodetect.train import train

    kwargs = {}
    params = inspect.signature(train).parameters
    if "callback" in params:
        kwargs["callback"] = callback
    if "cancel" in params:
        kwargs["cancel"] = cancel
    try:
        return Path(
            train(
                images=images,
                labels=str(labels),
                pointclouds=clouds,
                config=config,
                out_dir=str(out),
                device="auto",
                seed=0,
                resume=False,
                progress=False,
                **kwargs,
            )
        )
    except Cancelled:
        return None


def _run_detection(model: str, image: str, clouds, threshold: float, box=None):
    """Background: detections of a scene, or of the tiles meeting a map box, as a GeoDataFrame."""
    import dataclasses

    from geodetect.infer import load_detector, plan_tasks, resolve_settings, run_task
    from geodetect.merge import merge_detections

    det = load_detector(model, "auto")
    settings = resolve_settings(det.meta, threshold=threshold)
    det.batch_size = settings.batch_size
    tasks = plan_tasks([image], clouds, det.meta, settings)
    if box is not None:
        tasks = [_clip_task(t, box, dataclasses.replace) for t in tasks]
        tasks = [t for t in tasks if t.windows]
    frames = [run_task(t, det, settings) for t in tasks]
    crs = tasks[0].grid.crs if tasks else None
    return merge_detections(frames, settings.nms_iou, crs=crs)


def _clip_task(task, box, replace):
    """Keep the task's tiles that meet a map box."""
    from geodetect.plugin._coords import map_to_pixel

    left, bottom, right, top = box
    px = map_to_pixel(
        np.array([[left, bottom], [right, top], [left, top], [right, bottom]]), task.grid.transform
    )
    c0, r0 = px.min(axis=0)
    c1, r1 = px.max(axis=0)
    t = task.tile
    wins = tuple((c, r) for c, r in task.windows if c < c1 and c + t > c0 and r < r1 and r + t > r0)
    return replace(task, windows=wins)
