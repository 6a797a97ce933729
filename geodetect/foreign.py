"""Other tools' pixel-frame label files (DOTA, YOLO-OBB, COCO, CVAT: `formats.py`) as label
tables in a CRS: each foreign image is matched to a scene by file name (or stem: DOTA names a
txt after its image), whose grid maps its pixels. Below both `labels` (`read_labels` reads
these formats directly, as `train --labels` does) and `convert` (the command)."""

from __future__ import annotations

from pathlib import Path, PurePath

import geopandas as gpd
import numpy as np
import pandas as pd
from affine import Affine

from geodetect.errors import GeodetectError, InputError, LabelError
from geodetect.formats import FORMATS, READERS, ImageBoxes, format_of
from geodetect.remote import display_name, is_remote


def file_name(value: object) -> str:
    """The file name of an `image` field (either slash), '' for a missing one."""
    return PurePath(str(value).replace("\\", "/")).name if isinstance(value, str) else ""


def _match(name: str, scenes: list, alone: bool) -> object | None:
    """The scene called `name` (file name, or stem: DOTA names a txt after its image); the only
    scene when there is one image and one scene (`alone`)."""
    for s in scenes:
        scene = display_name(s.path)
        if name in (scene, PurePath(scene).stem):
            return s
    return scenes[0] if alone and len(scenes) == 1 else None


def read_boxes(path: str | Path, fmt: str | None = None) -> list[ImageBoxes]:
    """A foreign file (format from `fmt` or the extension) as per-image pixel boxes."""
    fmt = fmt or format_of(path)
    if fmt not in READERS:
        raise InputError(f"{path}: not one of the formats {', '.join(FORMATS)}")
    if not Path(path).exists():
        raise LabelError(f"{path}: no such file")
    try:
        return READERS[fmt](path)
    except GeodetectError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise LabelError(f"{path}: not a valid {fmt} file ({type(exc).__name__}: {exc})") from None


def boxes_to_vector(
    images: list[ImageBoxes], scenes: list, strict: bool = True
) -> gpd.GeoDataFrame:
    """Per-image pixel boxes as one label table (or detections table, when every object has a
    score), in the first matched scene's CRS; pixel coordinates when no scene is given.
    An image that matches none of `scenes` is an error when `strict`, else left out (training
    on some of a dataset's images)."""
    from geodetect.boxes import detections_frame, labels_frame
    from geodetect.north import reproject_detections
    from geodetect.raster import Grid, open_raster

    frames, crs = [], None
    found = [im for im in images if len(im.boxes)]
    detections = bool(found) and all(im.scores is not None for im in found)
    for img in images:
        scene = _match(img.name, scenes, alone=len(images) == 1)
        if scene is None and scenes and not strict:
            continue
        if scene is None and img.path and (is_remote(img.path) or Path(img.path).exists()):
            scene = open_raster(img.path)
        if scene is None and scenes:
            raise InputError(f"image {img.name!r} is none of the --image scenes")
        grid = scene.grid if scene is not None else Grid(None, Affine.identity(), 1, 1)
        name = display_name(scene.path) if scene is not None else img.name
        if detections:
            scores = img.scores if img.scores is not None else np.zeros(0)
            f = detections_frame(img.boxes, scores, img.classes, img.headings, grid, name)
        else:
            f = labels_frame(img.boxes, img.classes, img.headings, img.negatives, grid, name)
        if frames and (crs is None) != (f.crs is None):
            raise InputError("some images have a CRS and some have none; give every --image")
        if frames and crs is not None and not f.crs.equals(crs):
            f = reproject_detections(f, crs)  # headings turned by the meridian convergence
        crs = f.crs if not frames else crs
        frames.append(f)
    if not frames:
        raise LabelError("no image of the file is one of the scenes (matched by file name)")
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)
