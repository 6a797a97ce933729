"""`geodetect convert`: label/detection files <-> DOTA, YOLO-OBB, COCO (rotated), CVAT XML.

Those formats are in pixels; our files are in a CRS. The scene(s) given with `images`
(`--image SCENE`) map one to the other: each object goes to the scene its `image` field names
(else the scene it lies on), each foreign image to the scene of the same file name (or stem:
DOTA names a txt after its image). Without a scene, a CRS-less file is taken as pixel
coordinates (the contract's frame for non-georeferenced scenes) and a foreign file becomes one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine

from geodetect.errors import InputError, LabelError
from geodetect.foreign import boxes_to_vector, file_name, read_boxes
from geodetect.formats import FORMATS, WRITERS, ImageBoxes, format_of
from geodetect.remote import display_name, is_remote


def _scenes(images: list[str] | None) -> list:
    from geodetect.raster import open_raster

    return [open_raster(p) for p in images or []]


# ------------------------------------------------------------------------------ CRS -> pixels


def vector_to_boxes(gdf: gpd.GeoDataFrame, scenes: list, source: str) -> list[ImageBoxes]:
    """A label or detection table as per-scene pixel boxes (detections keep their scores)."""
    from geodetect.boxes import affine_geoms, heading_to_pixel, polygon_boxes
    from geodetect.labels import validate_labels
    from geodetect.north import reproject_detections
    from geodetect.raster import Grid

    detections = "label" not in gdf and "score" in gdf
    if detections:
        gdf = gdf.assign(label="positive")
    gdf = validate_labels(gdf, source)
    if not scenes:
        if gdf.crs is not None:
            raise InputError(f"{source} is in a CRS; give --image SCENE to map it to pixels")
        names = gdf["image"].map(file_name) if "image" in gdf else pd.Series([""] * len(gdf))
        groups = [(n or "image", gdf[names.to_numpy() == n], None) for n in dict.fromkeys(names)]
    else:
        groups = []
        taken = np.zeros(len(gdf), bool)
        for s in scenes:
            sub = reproject_detections(gdf, s.grid.crs)  # headings to the scene's grid north
            named = sub["image"].map(file_name) if "image" in sub else pd.Series([""] * len(sub))
            scene_name = display_name(s.path)
            on = named.to_numpy() == scene_name
            left, bottom, right, top = s.grid.bounds
            free = (named.to_numpy() == "") & ~taken
            on |= free & sub.geometry.intersects(shapely.box(left, bottom, right, top)).to_numpy()
            taken |= on
            groups.append((scene_name, sub[on], s.grid))
    out = []
    for name, sub, grid in groups:
        grid = grid or Grid(None, Affine.identity(), 0, 0)
        pos = (sub["label"] == "positive").to_numpy()
        try:
            boxes, _ = polygon_boxes(sub.geometry[pos], grid.transform)
        except ValueError as exc:
            raise LabelError(f"{source}: on {name}'s grid, {exc}") from None
        heads = (
            sub["heading_deg"].to_numpy(float)[pos]
            if "heading_deg" in sub
            else np.full(len(boxes), np.nan)
        )
        img = ImageBoxes(name, grid.width or None, grid.height or None, boxes)
        img.classes = [str(c) for c in sub["class"].to_numpy()[pos]]
        img.headings = heading_to_pixel(heads, grid.transform, georeferenced=grid.crs is not None)
        if detections:
            img.scores = sub["score"].to_numpy(float)[pos]
        for g in affine_geoms(sub.geometry.to_numpy()[~pos], ~grid.transform):
            parts = list(getattr(g, "geoms", [g]))
            img.negatives += [p for p in parts if not p.interiors]  # a hole has no place
        out.append(img)
    return out


# ------------------------------------------------------------------------------ the command


def convert_labels(
    src: str | Path,
    dst: str | Path,
    images: list[str] | None = None,
    src_format: str | None = None,
    dst_format: str | None = None,
) -> dict:
    """Convert between a label/detection vector file and DOTA / YOLO-OBB / COCO / CVAT.

    Formats come from the extensions (`.txt` DOTA, `.yaml` YOLO-OBB data file, `.json` COCO,
    `.xml` CVAT, else a vector file) unless given. Returns {"out": [paths], "images",
    "objects", "dropped_negatives"}.
    """
    from geodetect.atomic import check_not_input, check_out_dir
    from geodetect.labels import read_vector, write_vector

    src, dst = Path(src), check_out_dir(dst)
    check_not_input(dst, [src, *(images or [])], "OUT")
    fin, fout = src_format or format_of(src), dst_format or format_of(dst)
    for f in (fin, fout):
        if f is not None and f not in FORMATS and f != "vector":
            raise InputError(f"unknown format {f!r}; use one of {', '.join(FORMATS)} or vector")
    scenes = _scenes(images)
    if fin in (None, "vector"):
        boxes = vector_to_boxes(read_vector(src), scenes, src.name)
    else:
        boxes = read_boxes(src, fin)
    summary = {
        "images": len(boxes),
        "objects": int(sum(len(b.boxes) for b in boxes)),
        "dropped_negatives": 0,
    }
    if fout in (None, "vector"):
        summary["out"] = [str(write_vector(boxes_to_vector(boxes, scenes), dst))]
        return summary
    if fout == "yolo" and any(b.width is None for b in boxes):
        raise InputError("YOLO-OBB coordinates are relative to the image size: give --image SCENE")
    for b in boxes:  # YOLO's image list: absolute paths, so it can live anywhere
        s = next((s for s in scenes if file_name(s.path) == b.name), None)
        if b.path is None and s is not None:
            b.path = s.path if is_remote(s.path) else str(Path(s.path).resolve())
    if fout in ("dota", "yolo"):
        summary["dropped_negatives"] = int(sum(len(b.negatives) for b in boxes))
    inputs = [src, *(images or []), *(b.path for b in boxes if b.path)]
    if fin == "yolo":
        inputs.append(src.parent / "labels")  # the label files read beside the data YAML
    summary["out"] = [str(p) for p in _write_atomically(boxes, dst, fout, inputs)]
    return summary


def _write_atomically(boxes: list[ImageBoxes], dst: Path, fmt: str, inputs: list) -> list[Path]:
    """Write into a temp folder beside `dst`, then move every file into place — unless one of
    them (DOTA's per-image txt, YOLO's images.txt and labels/) would replace an input."""
    from geodetect.atomic import check_not_input

    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        written = WRITERS[fmt](boxes, tmp / dst.name)
        check_not_input([dst.parent / f.relative_to(tmp) for f in written], inputs, "OUT")
        final = []
        for f in written:
            target = dst.parent / f.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
            final.append(target)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
