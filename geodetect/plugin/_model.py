"""The labelling session without Qt or napari: labels, detections, classes, undo/redo, autosave.

Every edit makes a new immutable `LabelState` and commits it; undo and redo walk the list of
states, so any edit (draw, move, delete, rotate, accept, reject, load, a class's front flag)
is undone the same way and nothing else (save, samples, train, detect) touches the history.
Shapes are napari data coordinates of the label layers (`LabelFrame`); a positive keeps its
heading in its features even while its class has no front, so the flag can be toggled back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from geodetect import geometry
from geodetect.plugin import _label_layer as ll

AUTOSAVE_SUFFIX = ".geodetect-autosave.gpkg"
UNDO_DEPTH = 200
MERGE_IOU = 0.5  # an accepted detection overlapping a positive this much is the same object
KINDS = ("positives", "negatives", "detections")


def autosave_path(scene_path: str | Path) -> Path:
    """The crash-safety sidecar of a scene: `<scene>.geodetect-autosave.gpkg`."""
    p = Path(scene_path)
    return p.with_name(p.name + AUTOSAVE_SUFFIX)


def empty_features(kind: str) -> pd.DataFrame:
    if kind == "negatives":
        return pd.DataFrame({"wkb": pd.Series([], dtype=object)})
    cols = {"class": pd.Series([], dtype=object)}
    if kind == "detections":
        cols["score"] = pd.Series([], dtype=np.float64)
    return ll.with_boxes(pd.DataFrame(cols), np.zeros((0, 5)), np.zeros(0))


@dataclass(frozen=True, eq=False)
class Shapes:
    """One layer's content: shapes (data coords, (k, 2) each) and one feature row per shape."""

    data: tuple
    features: pd.DataFrame

    def __len__(self) -> int:
        return len(self.data)

    def take(self, idx) -> Shapes:
        idx = list(idx)
        return Shapes(
            tuple(self.data[i] for i in idx), self.features.iloc[idx].reset_index(drop=True)
        )

    def drop(self, idx) -> Shapes:
        gone = set(idx)
        return self.take([i for i in range(len(self.data)) if i not in gone])

    def plus(self, other: Shapes) -> Shapes:
        feats = pd.concat([self.features, other.features], ignore_index=True)
        return Shapes(
            self.data + other.data, feats[self.features.columns.union(feats.columns, sort=False)]
        )


@dataclass(frozen=True, eq=False)
class LabelState:
    positives: Shapes
    negatives: Shapes
    detections: Shapes
    classes: tuple  # ((name, has_front), ...) in display order

    @property
    def has_front(self) -> dict[str, bool]:
        return dict(self.classes)


class LabelModel:
    """A scene's labelling session. Listeners get `(state, kinds_changed)` after each change."""

    def __init__(self, frame: ll.LabelFrame, classes: dict[str, bool]):
        self.frame = frame
        empty = {k: Shapes((), empty_features(k)) for k in KINDS}
        self.state = LabelState(**empty, classes=tuple(classes.items()))
        self._undo: list[LabelState] = []
        self._redo: list[LabelState] = []
        self.listeners: list[Callable[[LabelState, set[str]], None]] = []
        self.dirty = False  # changed since the last autosave

    # ---------------------------------------------------------------------- history

    def commit(self, state: LabelState) -> None:
        if state is self.state:
            return
        self._undo.append(self.state)
        del self._undo[:-UNDO_DEPTH]
        self._redo.clear()
        self._set(state)

    def _set(self, state: LabelState) -> None:
        old, self.state = self.state, state
        changed = {k for k in KINDS if getattr(old, k) is not getattr(state, k)}
        if old.classes != state.classes:
            changed.add("classes")
        self.dirty = True
        for listener in list(self.listeners):
            listener(state, changed)

    def undo(self) -> bool:
        if not self._undo:
            return False
        self._redo.append(self.state)
        self._set(self._undo.pop())
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        self._undo.append(self.state)
        self._set(self._redo.pop())
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # ---------------------------------------------------------------------- classes

    def add_class(self, name: str, front: bool = False) -> bool:
        name = name.strip()
        if not name or name in self.state.has_front:
            return False
        self.commit(replace(self.state, classes=(*self.state.classes, (name, front))))
        return True

    def remove_class(self, name: str) -> str | None:
        """None when removed, else why not."""
        if name in self.counts()["positives"]:
            return f"'{name}' still has positives; delete them first"
        if len(self.state.classes) < 2:
            return "keep at least one class"
        self.commit(
            replace(self.state, classes=tuple(c for c in self.state.classes if c[0] != name))
        )
        return None

    def set_front(self, name: str, front: bool) -> None:
        """A display and export flag: the positives keep their headings either way."""
        classes = tuple((n, front if n == name else f) for n, f in self.state.classes)
        if name not in dict(classes):
            classes = (*classes, (name, front))
        self.commit(replace(self.state, classes=classes))

    def _with_classes(self, names) -> tuple:
        known = self.state.has_front
        extra = tuple((str(n), False) for n in dict.fromkeys(map(str, names)) if n not in known)
        return self.state.classes + extra

    # ---------------------------------------------------------------------- positives

    def positive_shapes(self, boxes: np.ndarray, heads: np.ndarray, classes: list) -> Shapes:
        feats = ll.with_boxes(pd.DataFrame({"class": [str(c) for c in classes]}), boxes, heads)
        return Shapes(tuple(ll.box_shapes(boxes, heads, self.frame)), feats)

    def add_positive(self, box_map, heading: float, cls: str) -> int:
        """Add one map-frame box [cx, cy, length, width, angle] with its heading; its index."""
        new = self.positive_shapes(
            np.asarray(box_map, float).reshape(1, 5), np.array([heading]), [cls]
        )
        s = self.state
        self.commit(replace(s, positives=s.positives.plus(new), classes=self._with_classes([cls])))
        return len(self.state.positives) - 1

    def positive_boxes(self, which: Shapes | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Map-frame boxes and headings. Every shape in a state was made from its features'
        exact box (layer edits are re-measured on the way in), so read those: vectorised,
        and fast enough for a thousand detections per keypress."""
        p = self.state.positives if which is None else which
        return _feature_boxes(p, self.frame)

    def edit_positives(self, idx, edit) -> None:
        """Apply `edit(boxes, headings) -> (boxes, headings)` to the positives at `idx`."""
        idx = sorted(idx)
        if not idx:
            return
        p = self.state.positives
        sel = p.take(idx)
        boxes, heads = self.positive_boxes(sel)
        boxes, heads = edit(boxes.copy(), heads.copy())
        data = list(p.data)
        for k, shape in zip(idx, ll.box_shapes(boxes, heads, self.frame), strict=True):
            data[k] = shape
        feats = p.features.copy()
        feats.loc[idx, "heading_deg"] = heads
        feats.loc[idx, ll.BOX_COLS] = boxes
        self.commit(replace(self.state, positives=Shapes(tuple(data), feats)))

    def rotate(self, idx, degrees: float) -> None:
        """Rotate positives clockwise by `degrees` about their centres."""

        def edit(b, h):
            b[:, 4] = (b[:, 4] + degrees) % 180.0
            return b, (h + degrees) % 360.0

        self.edit_positives(idx, edit)

    def flip(self, idx) -> None:
        """Turn positives' front to the other end."""
        self.edit_positives(idx, lambda b, h: (b, (h + 180.0) % 360.0))

    def scale_width(self, idx, factor: float) -> None:
        """Widen (factor > 1) or narrow positives, never past their length."""

        def edit(b, h):
            b[:, 3] = np.minimum(b[:, 3] * factor, b[:, 2])
            return b, h

        self.edit_positives(idx, edit)

    def positives_from_layer(self, data: list, features: pd.DataFrame, default_class: str) -> None:
        """Adopt the positives layer after a napari edit: every shape back to a clean
        4-corner rectangle with class, heading and exact box."""
        shapes = [ll.rect4(np.asarray(d, np.float64)[:, -2:], self.frame) for d in data]
        feats = _rows(features, len(data), {"class": default_class})
        feats["class"] = [c if isinstance(c, str) and c else default_class for c in feats["class"]]
        boxes, heads = ll.positive_boxes(shapes, feats, self.frame)
        feats = ll.with_boxes(feats, boxes, heads)
        new = Shapes(tuple(ll.box_shapes(boxes, heads, self.frame)), feats)
        s = self.state
        self.commit(replace(s, positives=new, classes=self._with_classes(feats["class"])))

    # ---------------------------------------------------------------------- negatives

    def add_negative(self, polygon_map) -> None:
        """Add a negative (shapely polygon, map frame)."""
        shapes, feats = ll.negative_shapes([polygon_map], self.frame)
        s = self.state
        self.commit(replace(s, negatives=s.negatives.plus(Shapes(tuple(shapes), feats))))

    def negatives_from_layer(self, data: list, features: pd.DataFrame) -> None:
        """Adopt the negatives layer after a napari edit; shapes of under 3 vertices (a stray
        click) are dropped, so the label file is always valid."""
        feats = _rows(features, len(data), {"wkb": None})
        keep = [i for i, d in enumerate(data) if len(np.unique(np.asarray(d)[:, -2:], axis=0)) >= 3]
        shapes = [np.asarray(data[i], np.float64)[:, -2:] for i in keep]
        feats = feats.iloc[keep].reset_index(drop=True)
        if "wkb" not in feats:
            feats = pd.DataFrame({"wkb": pd.Series([None] * len(shapes), dtype=object)})
        self.commit(replace(self.state, negatives=Shapes(tuple(shapes), feats[["wkb"]])))

    # ---------------------------------------------------------------------- detections

    def set_detections(self, gdf) -> int:
        """Detections to review; a fronted one is drawn with a nose on its front edge (one
        layer, no arrow layer to rebuild on every accept)."""
        _, feats = ll.detections_to_layers(gdf, self.frame)
        data = ll.nosed_shapes(
            *_feature_boxes(Shapes((None,) * len(feats), feats), self.frame), self.frame
        )
        s = self.state
        self.commit(
            replace(
                s, detections=Shapes(tuple(data), feats), classes=self._with_classes(feats["class"])
            )
        )
        return len(data)

    def accept(self, idx) -> tuple[int, int]:
        """Detections at `idx` become positives; (added, merged into an existing positive)."""
        idx = sorted(set(idx))
        if not idx:
            return 0, 0
        s = self.state
        taken = s.detections.take(idx)
        boxes, heads = _feature_boxes(taken, self.frame)
        have, _ = self.positive_boxes()
        keep: list[int] = []
        for i in range(len(boxes)):
            others = np.concatenate([have, boxes[keep]]) if keep else have
            if len(others) and geometry.rotated_iou(boxes[i : i + 1], others).max() >= MERGE_IOU:
                continue
            keep.append(i)
        new = self.positive_shapes(
            boxes[keep], heads[keep], list(taken.features["class"].iloc[keep])
        )
        self.commit(
            replace(
                s,
                positives=s.positives.plus(new),
                detections=s.detections.drop(idx),
                classes=self._with_classes(new.features["class"]),
            )
        )
        return len(keep), len(idx) - len(keep)

    def reject(self, idx) -> int:
        """Detections at `idx` become hard negatives (their rectangle)."""
        from shapely.geometry import Polygon

        idx = sorted(set(idx))
        if not idx:
            return 0
        s = self.state
        taken = s.detections.take(idx)
        boxes, heads = _feature_boxes(taken, self.frame)
        corners = ll.rectangle_corners(boxes, heads, self.frame)
        shapes, feats = ll.negative_shapes([Polygon(c) for c in corners], self.frame)
        negatives = s.negatives.plus(Shapes(tuple(shapes), feats))
        self.commit(replace(s, negatives=negatives, detections=s.detections.drop(idx)))
        return len(idx)

    # ---------------------------------------------------------------------- files

    def labels_frame(self):
        """The current labels as the contract's GeoDataFrame (scene CRS)."""
        s = self.state
        return ll.layers_to_frame(
            list(s.positives.data),
            s.positives.features,
            list(s.negatives.data),
            self.frame,
            s.has_front,
            s.negatives.features,
        )

    def load(self, gdf) -> tuple[int, int]:
        """Replace the labels by a label table's (reprojected to the scene); undoable."""
        pos, feats, neg, neg_feats, fronts = ll.frame_to_layers(gdf, self.frame)
        classes = dict(self.state.classes)
        for c, front in fronts.items():
            classes[c] = front or (classes.get(c, False) and not len(feats))
        self.commit(
            replace(
                self.state,
                positives=Shapes(tuple(pos), feats),
                negatives=Shapes(tuple(neg), neg_feats),
                classes=tuple(classes.items()),
            )
        )
        return len(pos), len(neg)

    def counts(self) -> dict:
        """{"positives": {class: n}, "negatives": n}."""
        per: dict[str, int] = {}
        for c in self.state.positives.features.get("class", []):
            per[str(c)] = per.get(str(c), 0) + 1
        return {"positives": per, "negatives": len(self.state.negatives)}

    @property
    def empty(self) -> bool:
        return not len(self.state.positives) and not len(self.state.negatives)

    def autosave(self) -> Path | None:
        """Write (atomically) or drop the scene's autosave sidecar; raises on failure."""
        from geodetect.labels import write_vector

        if not self.frame.scene_path:
            return None
        side = autosave_path(self.frame.scene_path)
        gdf = self.labels_frame()
        self.dirty = False
        if len(gdf) == 0:
            side.unlink(missing_ok=True)
            return None
        return Path(write_vector(gdf, side))

    def heading_arrows(self, which: str = "positives") -> np.ndarray:
        """Vectors-layer data for the fronted shapes of `which`."""
        p = getattr(self.state, which)
        if not len(p):
            return np.zeros((0, 2, 2))
        boxes, heads = _feature_boxes(p, self.frame)
        front = self.state.has_front
        fronted = np.array([front.get(str(c), which == "detections") for c in p.features["class"]])
        return ll.heading_vectors(boxes, np.where(fronted, heads, np.nan), self.frame)


def _rows(features: pd.DataFrame, n: int, defaults: dict) -> pd.DataFrame:
    """A layer's features as n rows: napari sends the data event of a new shape before its
    features row exists."""
    feats = features.reset_index(drop=True).iloc[:n].copy()
    for col, value in defaults.items():
        if col not in feats:
            feats[col] = pd.Series([value] * len(feats), dtype=object)
    if len(feats) < n:
        extra = pd.DataFrame({c: [v] * (n - len(feats)) for c, v in defaults.items()})
        feats = pd.concat([feats, extra], ignore_index=True)
    return feats


def _feature_boxes(p: Shapes, frame: ll.LabelFrame) -> tuple[np.ndarray, np.ndarray]:
    feats = p.features
    if len(p) and set(ll.BOX_COLS) <= set(feats.columns):
        boxes = feats[ll.BOX_COLS].to_numpy(np.float64)
        if np.isfinite(boxes).all():
            return boxes, pd.to_numeric(feats["heading_deg"], errors="coerce").to_numpy(np.float64)
    return (
        ll.positive_boxes(list(p.data), feats, frame) if len(p) else (np.zeros((0, 5)), np.zeros(0))
    )
