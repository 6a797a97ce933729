"""npe2 writer: the `positives` / `negatives` Shapes layers as a geodetect label file."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geodetect.errors import GeodetectError
from geodetect.plugin import _label_layer as ll
from geodetect.plugin._coords import KEY


def write_labels(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the plugin's label layers to `path` (format by extension); [] when there are none.

    Only layers the plugin created (metadata carries their frame) are written, so the CRS and
    offsets are known; a class has a front when any of its positives carries a heading.
    """
    from geodetect.labels import write_vector

    pos, neg, frame, neg_feats = [], [], None, None
    feats = pd.DataFrame({"class": [], "heading_deg": []})
    for data, meta, layer_type in layer_data:
        info = (meta.get("metadata") or {}).get(KEY, {})
        if layer_type != "shapes" or info.get("kind") not in (ll.POSITIVES, ll.NEGATIVES):
            continue
        frame = frame or ll.LabelFrame(
            info["crs"] is not None,
            info["crs"],
            tuple(info["translate"]),
            info.get("image"),
            info.get("path"),
        )
        if info["kind"] == ll.POSITIVES:
            pos = list(data)
            feats = pd.DataFrame(meta.get("features", feats))
        else:
            neg = list(data)
            neg_feats = pd.DataFrame(meta.get("features", {}))
    if frame is None:
        return []
    has_front: dict[str, bool] = {}
    for c, h in zip(feats.get("class", []), feats.get("heading_deg", []), strict=False):
        has_front[str(c)] = has_front.get(str(c), False) or bool(np.isfinite(h))
    from geodetect.atomic import check_not_input

    try:
        check_not_input(path, [frame.scene_path], "save")  # never over the scene itself
        out = write_vector(ll.layers_to_frame(pos, feats, neg, frame, has_front, neg_feats), path)
    except (GeodetectError, OSError, ValueError):
        return []
    return [str(out)]
