"""npe2 writer: the `positives` / `negatives` Shapes layers as a geodetect label file."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from geodetect.errors import GeodetectError
from geodetect.plugin import _label_layer as ll
from geodetect.plugin._coords import KEY

log = logging.getLogger(__name__)


def _frame_of(info: dict) -> ll.LabelFrame:
    return ll.LabelFrame(
        info["crs"] is not None,
        info["crs"],
        tuple(info["translate"]),
        info.get("image"),
        info.get("path"),
    )


def frame_from_layer_data(layer_data: list[tuple]):
    """The label table of the plugin's label layers given as (data, meta, type); None if none.

    Only layers the plugin made (their metadata carries the frame) count, so the CRS and
    offsets are known; a class has a front when any of its positives carries a heading.
    Negatives of under 3 distinct vertices (an unfinished click) are left out.
    """
    pos, neg, frame, neg_feats = [], [], None, None
    feats = pd.DataFrame({"class": [], "heading_deg": []})
    for data, meta, layer_type in layer_data:
        info = (meta.get("metadata") or {}).get(KEY, {})
        if layer_type != "shapes" or info.get("kind") not in (ll.POSITIVES, ll.NEGATIVES):
            continue
        frame = frame or _frame_of(info)
        if info["kind"] == ll.POSITIVES:
            pos = list(data)
            feats = pd.DataFrame(meta.get("features", feats))
        else:
            ok = [i for i, d in enumerate(data) if len(np.unique(np.asarray(d), axis=0)) >= 3]
            neg = [data[i] for i in ok]
            nf = pd.DataFrame(meta.get("features", {}))
            neg_feats = nf.iloc[ok].reset_index(drop=True) if len(nf) == len(data) else None
    if frame is None:
        return None
    has_front: dict[str, bool] = {}
    for c, h in zip(feats.get("class", []), feats.get("heading_deg", []), strict=False):
        has_front[str(c)] = has_front.get(str(c), False) or bool(np.isfinite(h))
    return ll.layers_to_frame(pos, feats, neg, frame, has_front, neg_feats)


def layers_frame(layers) -> object:
    """The label table of the plugin's label layers in a napari layer list."""
    return frame_from_layer_data([ly.as_layer_data_tuple() for ly in layers])


def write_labels(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the plugin's label layers to `path` (format by extension).

    npe2 takes [] as "nothing written"; why is logged and shown as a napari warning (never
    over the scene or cloud the labels were drawn on)."""
    from geodetect.atomic import check_not_input
    from geodetect.labels import write_vector

    try:
        gdf = frame_from_layer_data(layer_data)
        if gdf is None:
            _warn(f"{path}: nothing written: no geodetect positives / negatives layer chosen")
            return []
        check_not_input(path, _scene_paths(layer_data), "save")  # never over the scene itself
        return [str(write_vector(gdf, path))]
    except (GeodetectError, OSError, ValueError) as exc:
        _warn(f"labels not written: {exc}")
        return []


def _warn(text: str) -> None:
    """Log, and show in napari's notifications when napari runs."""
    log.warning(text)
    try:
        from napari.utils.notifications import show_warning
    except ImportError:  # the writer called without napari
        return
    show_warning(text)


def _scene_paths(layer_data: list[tuple]) -> list[str]:
    """The scene files the label layers were drawn on (from the plugin's layer metadata)."""
    infos = [(meta.get("metadata") or {}).get(KEY, {}) for _, meta, _ in layer_data]
    return [str(i["path"]) for i in infos if i.get("path")]
