"""The napari side of a `LabelModel`: its layers, their edits, keys and the one active tool.

The model is the truth; layers show it. A napari edit (move, delete, vertex drag, a finished
polygon) is read back into the model as one undoable step; a model change is written to the
layers with the smallest edit that does it (append or remove shapes), so accepting one of a
thousand detections does not rebuild the layer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QTimer

from geodetect.plugin import _label_layer as ll
from geodetect.plugin._model import LabelModel, LabelState, Shapes

TOOLS = ("pan", "positive", "negative", "edit", "review")
STYLE = {
    ll.POSITIVES: {"face_color": [1, 1, 0, 0.15], "edge_color": "yellow"},
    ll.NEGATIVES: {"face_color": [1, 0, 0, 0.2], "edge_color": "red"},
    ll.DETECTIONS: {"face_color": [0, 0, 0, 0], "edge_color": "cyan"},
}
TOOL_LAYER = {  # the layer that takes the mouse under each tool, and its napari mode
    "negative": (ll.NEGATIVES, "add_polygon"),
    "edit": (ll.POSITIVES, "select"),
    "review": (ll.DETECTIONS, "select"),
    "positive": (ll.POSITIVES, "pan_zoom"),
}
CHUNK = 25  # shapes written per event-loop turn (napari triangulates each one)
ARROWS = {ll.HEADINGS: ("positives", "orange")}


class LabelLayers:
    """Creates the label layers for a model and keeps both in step."""

    def __init__(self, viewer, model: LabelModel, current_class: Callable[[], str]):
        self.viewer = viewer
        self.model = model
        self.current_class = current_class
        self.tool = "pan"
        self._quiet = False
        self._filling: dict[str, Shapes] = {}
        self._hidden: dict[str, bool] = {}  # layers hidden while filling: were they visible
        self._from_layer: str | None = None
        self._shown: dict[str, Shapes] = {}
        self._default_class: str | None = None
        self.layers = {}
        for name in (ll.NEGATIVES, ll.POSITIVES, ll.DETECTIONS):
            self.layers[name] = self._shapes_layer(name)
        for name, (_, color) in ARROWS.items():
            self.layers[name] = self._vectors_layer(name, color)
        self.layers[ll.POSITIVES].events.data.connect(self._on_positives_edited)
        self.layers[ll.NEGATIVES].events.data.connect(self._on_negatives_edited)
        model.listeners.append(self.show)
        self.show(model.state, {"positives", "negatives", "detections", "classes"})

    def _existing(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _shapes_layer(self, name: str):
        f = self.model.frame
        layer = self._existing(name)
        if layer is None:
            layer = self.viewer.add_shapes(
                None,
                ndim=2,
                name=name,
                shape_type="polygon",
                translate=f.translate,
                metadata=f.meta(name),
                edge_width=0.3,
                **STYLE[name],
            )
        else:
            layer.metadata = {**layer.metadata, **f.meta(name)}
        return layer

    def _vectors_layer(self, name: str, color: str):
        layer = self._existing(name)
        if layer is None:
            layer = self.viewer.add_vectors(
                np.zeros((0, 2, 2)),
                name=name,
                translate=self.model.frame.translate,
                edge_color=color,
                edge_width=0.4,
                vector_style="arrow",
            )
        return layer

    # ---------------------------------------------------------------------- model -> layers

    def show(self, state: LabelState, changed: set[str]) -> None:
        for kind in ("positives", "negatives", "detections"):
            if kind in changed and kind == self._from_layer:
                # napari is still inside the edit (e.g. finishing a polygon): writing the
                # layer now re-enters it, so write once the event loop is back
                QTimer.singleShot(0, lambda k=kind: self._resync(k))
            elif kind in changed:
                old = None if kind in self._filling else self._shown.get(kind)
                self._shown[kind] = getattr(state, kind)
                self._apply(kind, old, getattr(state, kind))
        if changed & {"positives", "classes"}:
            self.layers[ll.HEADINGS].data = self.model.heading_arrows("positives")
        cls = self.current_class()
        if cls != self._default_class:  # napari rebuilds its defaults table on every set
            self._default_class = cls
            defaults = {c: np.nan for c in ["heading_deg", *ll.BOX_COLS]}
            self.layers[ll.POSITIVES].feature_defaults = {"class": cls, **defaults}

    def _resync(self, kind: str) -> None:
        new = getattr(self.model.state, kind)
        if self._shown.get(kind) is not new:
            self._shown[kind] = new
            self._apply(kind, None, new)

    def _apply(self, kind: str, old: Shapes | None, new: Shapes) -> None:
        """Write `new` into the layer, by appending or removing shapes when that is the edit;
        a whole new set goes in CHUNK shapes per event-loop turn into the hidden layer, so the GUI
        never waits for more than one chunk and draws the set once, when it is complete."""
        layer = self.layers[kind]
        self._quiet = True
        try:
            gone = _removed(old, new) if old is not None else None
            appended = old is not None and len(new) > len(old)
            if appended and _same(new.data[: len(old)], old.data):
                _deselect(layer)
                self._filling[kind] = new
                self._quiet = False
                self._fill(kind, new, len(old))
                return
            elif gone:
                layer.selected_data = set(gone)  # one selection event, then one removal
                layer.remove_selected()
                if _rows_match(layer.features, new.features):
                    return  # napari dropped the same feature rows: nothing to rewrite
            elif old is None or not _same(old.data, new.data):
                _deselect(layer)
                if len(new) > CHUNK:
                    self._hide(kind)  # before clearing: a hidden layer is not redrawn
                layer.data = []
                self._filling[kind] = new
                self._quiet = False
                self._fill(kind, new, 0)
                return
            else:
                _deselect(layer)
            layer.features = new.features.reset_index(drop=True)
        finally:
            self._quiet = False

    def _fill(self, kind: str, new: Shapes, start: int) -> None:
        if self._filling.get(kind) is not new:
            return  # superseded by a newer state
        layer = self.layers[kind]
        self._quiet = True
        try:
            if start + CHUNK < len(new):
                self._hide(kind)
            layer.add_polygons(list(new.data[start : start + CHUNK]))
            if start + CHUNK < len(new):
                QTimer.singleShot(0, lambda: self._fill(kind, new, start + CHUNK))
                return
            layer.features = new.features.reset_index(drop=True)
            if kind == "detections" and len(new):
                layer.edge_color = "score"
                layer.edge_colormap = "plasma"
                layer.edge_contrast_limits = (0.0, 1.0)
        finally:
            self._quiet = False
        if kind in self._hidden:  # drawn in a turn of its own
            QTimer.singleShot(0, lambda: self._unhide(kind, new))
        else:
            del self._filling[kind]

    def _hide(self, kind: str) -> None:
        """Hidden while it fills: napari then skips redrawing every shape after each chunk
        (a repaint per chunk made each turn ~0.4 s with 1,000 detections)."""
        if kind not in self._hidden:
            layer = self.layers[kind]
            self._hidden[kind] = layer.visible
            layer.visible = False

    def _unhide(self, kind: str, new: Shapes) -> None:
        if self._filling.get(kind) is not new:
            return  # superseded: the newer fill shows the layer
        del self._filling[kind]
        if self._hidden.pop(kind):
            layer = self.layers[kind]
            layer.visible = True  # napari brings back the mode it had when hidden:
            layer.mode = self._mode(kind)  # the current tool's instead

    @property
    def busy(self) -> bool:
        """Still writing a large set of shapes into a layer."""
        return bool(self._filling)

    # ---------------------------------------------------------------------- layers -> model

    def _settled(self, event) -> bool:
        """napari announces an edit before and after; act once, after."""
        if self._quiet:
            return False
        return getattr(event, "action", None) not in ("adding", "removing", "changing")

    def _on_positives_edited(self, event=None) -> None:
        if self._settled(event):
            layer = self.layers[ll.POSITIVES]
            self._shown.pop("positives", None)  # the layer no longer shows the model's shapes
            self._from_layer = "positives"
            try:
                self.model.positives_from_layer(
                    list(layer.data), layer.features, self.current_class()
                )
            finally:
                self._from_layer = None

    def _on_negatives_edited(self, event=None) -> None:
        if self._settled(event):
            layer = self.layers[ll.NEGATIVES]
            self._shown.pop("negatives", None)
            self._from_layer = "negatives"
            try:
                self.model.negatives_from_layer(list(layer.data), layer.features)
            finally:
                self._from_layer = None

    # ---------------------------------------------------------------------- tools and keys

    def set_tool(self, tool: str) -> None:
        """One active tool: every other label layer goes back to pan/zoom (a layer left in
        add-polygon mode once grew stray negatives under positive drags)."""
        if tool not in TOOLS:
            raise ValueError(tool)
        self.tool = tool
        for name in (ll.POSITIVES, ll.NEGATIVES, ll.DETECTIONS):
            self.layers[name].mode = "pan_zoom"
        target = TOOL_LAYER.get(tool)
        if target is not None:
            layer = self.layers[target[0]]
            self.viewer.layers.selection.active = layer
            layer.mode = target[1]

    def _mode(self, name: str) -> str:
        """The mode of label layer `name` under the current tool."""
        target = TOOL_LAYER.get(self.tool)
        return target[1] if target is not None and target[0] == name else "pan_zoom"

    def bind(self, name: str, key: str, func: Callable[[], object]) -> None:
        self.layers[name].bind_key(key, lambda _layer: func(), overwrite=True)

    def selected(self, name: str) -> list[int]:
        return sorted(self.layers[name].selected_data)


def _removed(old: Shapes, new: Shapes) -> list[int] | None:
    """Indices of `old` that `new` lacks when `new` is `old` minus some shapes, else None."""
    if len(new) >= len(old):
        return None
    kept = {id(s) for s in new.data}
    gone = [i for i, s in enumerate(old.data) if id(s) not in kept]
    if len(old) - len(gone) != len(new):
        return None
    rest = tuple(s for s in old.data if id(s) in kept)
    return gone if _same(rest, new.data) else None


def _deselect(layer) -> None:
    if layer.selected_data:
        layer.selected_data = set()


def _rows_match(shown, model) -> bool:
    """The layer's features are the model's (napari removes the rows of removed shapes)."""
    if len(shown) != len(model) or list(shown.columns) != list(model.columns):
        return False
    if "cx" not in model:
        return True
    return np.array_equal(shown["cx"].to_numpy(float), model["cx"].to_numpy(float), equal_nan=True)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
