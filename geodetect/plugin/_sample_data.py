"""npe2 sample data: a generated demo scene with its point cloud and sparse labels."""

from __future__ import annotations

import tempfile
from pathlib import Path

from geodetect.plugin import _label_layer as ll
from geodetect.plugin._coords import KEY
from geodetect.plugin._reader import cloud_layers, scene_layer

SIZE = 512


def demo_scene(out_dir: str | Path | None = None, size: int = SIZE) -> list[tuple]:
    """Image, nDSM/DSM, points and the sparse labels as positives / negatives layers.

    Files go to a per-user temp folder (made once, reused), so labels can be saved beside them.
    """
    from geodetect.data import make_sample_data
    from geodetect.labels import read_labels

    out = Path(out_dir or Path(tempfile.gettempdir()) / "geodetect-demo")
    sample = out / "scene.tif"
    if not (sample.is_file() and (out / "scene.laz").is_file()):
        make_sample_data(out, size=size, seed=0)
    scene = scene_layer(str(sample))
    layers = [*cloud_layers(str(out / "scene.laz")), scene]
    for _data, kwargs, _ in layers:
        if kwargs["name"].endswith("points"):
            kwargs["visible"] = (
                False  # the image is what one labels on; the cloud is one click away
            )
    frame = ll.LabelFrame.from_meta(scene[1]["metadata"][KEY])
    pos, feats, neg, neg_feats, _ = ll.frame_to_layers(
        read_labels(out / "scene_labels.gpkg"), frame
    )
    layers.append(_shapes(neg, neg_feats, frame, ll.NEGATIVES, [1, 0, 0, 0.2], "red"))
    layers.append(_shapes(pos, feats, frame, ll.POSITIVES, [1, 1, 0, 0.15], "yellow"))
    return layers


def _shapes(data, feats, frame, name, face, edge) -> tuple:
    kwargs = {
        "name": name,
        "shape_type": "polygon",
        "translate": frame.translate,
        "metadata": frame.meta(name),
        "face_color": face,
        "edge_color": edge,
        "edge_width": 0.3,
    }
    kwargs["features"] = feats
    return (list(data), kwargs, "shapes")
