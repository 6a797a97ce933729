"""The samples mosaic (`geodetect.gallery`, built by the samples job) as a napari layer."""

from __future__ import annotations

import numpy as np


def add_gallery(dock, result: dict):
    """The samples job's mosaic as an image layer just right of the scene, at its pixel size,
    and the view reset to show both."""
    from affine import Affine

    from geodetect.plugin._coords import world_origin

    mosaic = np.load(result["mosaic"])
    meta = dock.scene_meta() or {}
    transform = Affine(*meta.get("transform", (1, 0, 0, 0, 1, 0)))
    georef = meta.get("crs") is not None
    res = abs(transform.a) or 1.0
    row0, col0 = world_origin(transform, georef)
    width = meta.get("shape", (0, 0))[1] * res
    name = f"{result['name']}; shown {result['shown_positives']} + {result['shown_negatives']}"
    layer = dock.viewer.add_image(
        mosaic,
        name=name,
        rgb=mosaic.ndim == 3,
        contrast_limits=(0, 255),
        scale=(res, res),
        translate=(row0, col0 + width * 1.05),
    )
    from qtpy.QtCore import QTimer

    # the view is reset in a turn of its own: adding the layer and redrawing the whole
    # reset view in one turn froze the GUI ~0.3 s
    QTimer.singleShot(0, dock.viewer.reset_view)
    dock.say(name)
    return layer
