"""Training samples from sparse labels: patches around positives and inside negatives.

A *patch* is a square window (twice the chip side) read once at the training GSD, normalised
with its scene's colour statistics, with two masks: `valid` (not nodata) and `known` (inside
a negative region or a labelled positive). Everything else is unknown and never trained as
background. Training chips are cut from patches with a random rotation/shift/zoom/mirror
(`transforms.transform_chip`), so a few dozen positives give endless distinct chips.

Held-out (validation) labels are unknown in every training patch, so nothing leaks. What
the patches come from (scenes, labels, classes, the split) is `project.py`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.windows import Window

from geodetect import geometry, transforms
from geodetect.config import Config
from geodetect.errors import InputError
from geodetect.geometry import round_boxes
from geodetect.project import Project, Scene, load_project, split_validation
from geodetect.targets import STRIDE, encode_targets

MAX_NEG_PATCHES_PER_POLYGON = 64


@dataclass
class Patch:
    """A normalised window of a scene with its masks and the boxes that touch it."""

    image: np.ndarray  # (C, P, P) float16
    valid: np.ndarray  # (P, P) uint8
    known: np.ndarray  # (P, P) uint8
    boxes: np.ndarray  # (M, 5) patch frame
    classes: np.ndarray  # (M,)
    headings: np.ndarray  # (M,)
    scene: int
    origin: tuple[int, int]  # (col, row) in the scene grid
    focus_class: int = -1  # class of the positive the patch is centred on, -1 for negatives


# ------------------------------------------------------------------------------ patches


def _mask(geoms: list, origin: tuple[int, int], size: int) -> np.ndarray:
    """(size, size) bool: pixel centres of a patch inside any of the geometries."""
    out = np.zeros((size, size), bool)
    if not geoms:
        return out
    box = shapely.box(origin[0], origin[1], origin[0] + size, origin[1] + size)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    xs += origin[0]
    ys += origin[1]
    for g in geoms:
        if not g.intersects(box):
            continue
        part = shapely.intersection(g, box)
        # only the pixels under the part's bounds can be inside it: a crown box tests a few
        # hundred points instead of the whole patch (real labels: hundreds of boxes)
        left, top, right, bottom = part.bounds
        c0, r0 = max(0, int(left - origin[0])), max(0, int(top - origin[1]))
        c1 = min(size, int(math.ceil(right - origin[0])) + 1)
        r1 = min(size, int(math.ceil(bottom - origin[1])) + 1)
        if c1 <= c0 or r1 <= r0:
            continue
        shapely.prepare(part)
        sub = (slice(r0, r1), slice(c0, c1))
        out[sub] |= shapely.contains_xy(part, xs[sub], ys[sub])
    return out


def _box_geoms(scene: Scene, which: np.ndarray) -> list:
    from geodetect.geometry import box_polygons

    return list(box_polygons(scene.boxes[which])) if which.any() else []


class PatchReader:
    """Reads patches of one scene (image bands through raster.SceneReader, nDSM once)."""

    def __init__(self, project: Project, k: int):
        from geodetect.raster import SceneReader

        self.project, self.k = project, k
        self.scene = project.scenes[k]
        self.reader = SceneReader(self.scene.path, self.scene.grid, bands=project.bands)
        self._ndsm: np.ndarray | None = None
        self._ndsm_origin = (0, 0)

    def close(self) -> None:
        self.reader.close()

    def _elevation(self, origin: tuple[int, int], size: int) -> np.ndarray:
        """nDSM under a patch, from one rasterisation of the labelled part of the scene."""
        if self._ndsm is None:
            self._ndsm, self._ndsm_origin = self._labelled_ndsm()
        out = np.full((size, size), np.nan, np.float32)
        c0, r0 = origin[0] - self._ndsm_origin[0], origin[1] - self._ndsm_origin[1]
        h, w = self._ndsm.shape
        rs, cs = slice(max(r0, 0), min(r0 + size, h)), slice(max(c0, 0), min(c0 + size, w))
        if rs.stop > rs.start and cs.stop > cs.start:
            out[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0] = self._ndsm[rs, cs]
        return out

    def _labelled_ndsm(self) -> tuple[np.ndarray, tuple[int, int]]:
        from geodetect.pointcloud import rasterize_cloud

        s, p = self.scene, self.project.patch
        geoms = _box_geoms(s, np.ones(len(s.boxes), bool)) + list(s.negatives)
        left, top, right, bottom = shapely.GeometryCollection(geoms).bounds
        c0 = max(0, int(math.floor(left)) - p)
        r0 = max(0, int(math.floor(top)) - p)
        c1 = min(s.grid.width, int(math.ceil(right)) + p)
        r1 = min(s.grid.height, int(math.ceil(bottom)) + p)
        sub = s.grid.window_grid(Window(c0, r0, max(1, c1 - c0), max(1, r1 - r0)))
        return rasterize_cloud(s.cloud, sub, kind="ndsm"), (c0, r0)

    def read(self, origin: tuple[int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
        """(normalised (C, size, size) float32, valid bool) of a window."""
        data, valid = self.reader.read(Window(origin[0], origin[1], size, size))
        x = transforms.normalise(data, valid, self.scene.stats)
        if self.project.elevation:
            ndsm = self._elevation(origin, size)
            scale = self.project.config.data.elevation_scale
            x = np.concatenate([x, transforms.elevation_channel(ndsm, valid.shape, scale)])
        return x, valid

    def patch(self, origin: tuple[int, int], size: int, training: bool, focus: int = -1) -> Patch:
        """A patch with its masks; `training` selects which labels are known (train vs val)."""
        s = self.scene
        x, valid = self.read(origin, size)
        use_pos = ~s.pos_val if training else s.pos_val
        use_neg = ~s.neg_val if training else s.neg_val
        known = _mask([g for g, v in zip(s.negatives, use_neg, strict=True) if v], origin, size)
        known |= _mask(_box_geoms(s, use_pos), origin, size)
        hidden = _mask(_box_geoms(s, ~use_pos), origin, size)  # the other split's objects
        if training:
            hidden |= _mask(
                [g for g, v in zip(s.negatives, s.neg_val, strict=True) if v], origin, size
            )
        known &= ~hidden
        boxes = s.boxes[use_pos].copy()
        boxes[:, 0] -= origin[0]
        boxes[:, 1] -= origin[1]
        r = np.hypot(boxes[:, 2], boxes[:, 3]) / 2
        near = (
            (boxes[:, 0] + r > 0)
            & (boxes[:, 0] - r < size)
            & (boxes[:, 1] + r > 0)
            & (boxes[:, 1] - r < size)
        )
        return Patch(
            image=x.astype(np.float16),
            valid=valid.astype(np.uint8),
            known=known.astype(np.uint8),
            boxes=boxes[near],
            classes=s.classes[use_pos][near],
            headings=s.headings[use_pos][near],
            scene=self.k,
            origin=origin,
            focus_class=focus,
        )


def _centred(cx: float, cy: float, size: int) -> tuple[int, int]:
    return int(round(cx - size / 2)), int(round(cy - size / 2))


def negative_centres(poly: Any, step: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Patch centres on a grid inside a negative polygon (at least its representative point)."""
    left, top, right, bottom = poly.bounds
    xs = np.arange(left + step / 2, right, step)
    ys = np.arange(top + step / 2, bottom, step)
    gx, gy = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(poly, gx.ravel(), gy.ravel()) if gx.size else np.zeros(0, bool)
    pts = list(zip(gx.ravel()[inside], gy.ravel()[inside], strict=True))
    if not pts:
        p = poly.representative_point()
        pts = [(p.x, p.y)]
    if len(pts) > MAX_NEG_PATCHES_PER_POLYGON:
        pick = rng.choice(len(pts), MAX_NEG_PATCHES_PER_POLYGON, replace=False)
        pts = [pts[i] for i in sorted(pick)]
    return pts


def extract_patches(
    project: Project, training: bool, seed: int = 0
) -> tuple[list[Patch], list[Patch]]:
    """(positive patches, negative patches) of the training (or validation) split."""
    rng = np.random.default_rng([seed, 11, int(training)])
    size, chip = project.patch, project.chip
    pos, neg = [], []
    for k, s in enumerate(project.scenes):
        reader = PatchReader(project, k)
        try:
            split = ~s.pos_val if training else s.pos_val
            for j in np.nonzero(split)[0]:
                b = s.boxes[j]
                pos.append(
                    reader.patch(_centred(b[0], b[1], size), size, training, int(s.classes[j]))
                )
            nsplit = ~s.neg_val if training else s.neg_val
            for g, use in zip(s.negatives, nsplit, strict=True):
                if use:
                    for cx, cy in negative_centres(g, 0.75 * chip, rng):
                        neg.append(reader.patch(_centred(cx, cy, size), size, training))
        finally:
            reader.close()
    return pos, neg


# ------------------------------------------------------------------------------ chips


def paste_positives(
    neg: Patch, sources: list[Patch], rng: np.random.Generator, rows: float = 0.0
) -> Patch:
    """A negative patch with each source's focus object (the positive it is centred on)
    copied in at a random known spot, its box and class added and its pixels made known.

    Why: with sparse labels a positive's surroundings are unknown, so a few labelled objects
    teach little about what is *not* one next to them; pasted into a negative region, the
    same object is seen on background that is known to hold nothing else, in new places.
    With probability `rows` an object comes as a row of 2-4 copies side by side (along its
    short axis, a small gap apart): cars in a parking lot, crowns in a closed stand. Labelled
    objects mostly stand alone; the detector must also split neighbours that touch.
    """
    size = neg.image.shape[-1]
    free = np.flatnonzero((neg.known > 0) & (neg.valid > 0))
    if not len(free):
        return neg
    image, known, valid = neg.image.copy(), neg.known.copy(), neg.valid.copy()
    boxes, classes, heads = [neg.boxes], [neg.classes], [neg.headings]
    for src in sources:
        j = _focus_index(src)
        if j is None:
            continue
        b = src.boxes[j]
        inside = transforms.box_pixels(b, *src.image.shape[-2:])
        if inside is None:
            continue
        (win_rows, win_cols), mask = inside
        dest = free[int(rng.integers(len(free)))]
        r, c = np.nonzero(mask)
        r, c = r + win_rows.start, c + win_cols.start
        ok = src.valid[r, c] > 0
        r, c = r[ok], c[ok]
        for ox, oy in _row_offsets(b, rng, rows):
            x, y = dest % size + round(ox), dest // size + round(oy)
            if not (0 <= x < size and 0 <= y < size):
                continue  # a row's copy whose centre falls off the patch
            dx, dy = int(x - round(b[0])), int(y - round(b[1]))
            inb = (r + dy >= 0) & (r + dy < size) & (c + dx >= 0) & (c + dx < size)
            rr, cc = r[inb], c[inb]
            image[:, rr + dy, cc + dx] = src.image[:, rr, cc]
            known[rr + dy, cc + dx] = 1
            valid[rr + dy, cc + dx] = 1
            boxes.append((b + [dx, dy, 0, 0, 0])[None])
            classes.append(src.classes[j : j + 1])
            heads.append(src.headings[j : j + 1])
    return Patch(
        image=image,
        valid=valid,
        known=known,
        boxes=np.concatenate(boxes).reshape(-1, 5),
        classes=np.concatenate(classes).astype(neg.classes.dtype if len(neg.classes) else int),
        headings=np.concatenate(heads).astype(np.float64),
        scene=neg.scene,
        origin=neg.origin,
        focus_class=-1,
    )


def _row_offsets(
    box: np.ndarray, rng: np.random.Generator, rows: float
) -> list[tuple[float, float]]:
    """Centre offsets (x, y) of the copies of one pasted object: one at (0, 0), or with
    probability `rows` 2-4 side by side along its short axis, 5-30 % of its width apart.
    Draws nothing when `rows` is 0 (recipes without rows keep their random stream)."""
    if rows <= 0 or rng.random() >= rows:
        return [(0.0, 0.0)]
    n = int(rng.integers(2, 5))
    step = box[3] * (1.0 + rng.uniform(0.05, 0.3))
    ux, uy = geometry.direction(box[4] + 90.0)
    return [(k * step * ux, k * step * uy) for k in range(n)]


def _focus_index(p: Patch) -> int | None:
    """Index of the positive a patch is centred on (its focus class, nearest the centre)."""
    idx = np.nonzero(p.classes == p.focus_class)[0]
    if not len(idx):
        return None
    half = p.image.shape[-1] / 2
    d = np.hypot(p.boxes[idx, 0] - half, p.boxes[idx, 1] - half)
    return int(idx[np.argmin(d)])


def known_at_stride(valid: np.ndarray, known: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """(1, H/stride, W/stride) float32: cells whose pixels are mostly valid and known."""
    m = (valid > 0) & (known > 0)
    h, w = m.shape[0] // stride, m.shape[1] // stride
    frac = m[: h * stride, : w * stride].reshape(h, stride, w, stride).mean(axis=(1, 3))
    return (frac >= 0.5).astype(np.float32)[None]


def make_chip(
    patch: Patch,
    params: transforms.ChipParams,
    chip: int,
    n_classes: int,
    colour_channels: int,
    upright: list[bool] | None = None,
) -> dict[str, np.ndarray]:
    """One training example (image + targets) from a patch and a random draw.

    Objects of `upright` classes (no orientation) get the upright box of the rotated object
    as target (`geometry.round_boxes`): the image turns, the label stays axis-aligned.
    """
    image, (valid, known), boxes, heads = transforms.transform_chip(
        patch.image.astype(np.float32),
        [patch.valid, patch.known],
        patch.boxes,
        patch.headings,
        params,
        chip,
        colour_channels,
    )
    image[:, valid == 0] = 0.0
    if upright is not None and any(upright) and len(boxes):
        up = np.asarray(upright, bool)[patch.classes]
        boxes = boxes.copy()
        boxes[up] = round_boxes(boxes[up])
    targets = encode_targets(boxes, patch.classes, heads, (chip, chip), n_classes)
    targets["known"] = known_at_stride(valid, known)
    targets["image"] = image.astype(np.float32)
    return targets


# ------------------------------------------------------------------------------ samples CLI


def write_samples(
    images: list[str],
    labels: str,
    pointclouds: list[str] | None,
    config: Config | None,
    out_dir: str | Path,
) -> Path:
    """`geodetect samples`: the normalised chips the trainer sees, plus `samples.csv`.

    Positives are rotated to the canonical orientation (long axis along x, front to the
    right); negatives are chips from the negative regions. Each chip is written as a PNG
    preview (first three channels) and a float32 .npy with every channel; the CSV lists
    path, array, label, class, image, angle_deg and heading_deg (in the scene's pixel frame).
    """
    import pandas as pd

    from geodetect.atomic import atomic_path, check_not_input

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; samples go into a folder")
    inputs = [*map(str, images), str(labels), *(pointclouds or [])]
    check_not_input(out / "samples.csv", inputs, "--out", folders=[out / "chips"])
    config = config or Config()
    project = load_project(list(map(str, images)), str(labels), pointclouds, config)
    split_validation(project, 0.0, 0)
    pos, neg = extract_patches(project, training=True)
    out.mkdir(parents=True, exist_ok=True)
    # chips go to a hidden folder that replaces `chips/` whole: no half-written chip and no
    # stale chip of an earlier run beside the new index
    tmp_chips = Path(tempfile.mkdtemp(prefix=".chips.", dir=out))
    old = out / f".chips.old.{os.getpid()}"
    try:
        rows = []
        for kind, patches in (("positive", pos), ("negative", neg)):
            for n, p in enumerate(patches):
                rows.append(_write_chip(tmp_chips, kind, n, p, project, project.chip))
        if (out / "chips").exists():
            os.replace(out / "chips", old)
        os.replace(tmp_chips, out / "chips")
        with atomic_path(out / "samples.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    finally:
        shutil.rmtree(tmp_chips, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out / "samples.csv"


def _write_chip(folder: Path, kind: str, n: int, p: Patch, project: Project, chip: int) -> dict:
    from PIL import Image

    angle = heading = float("nan")
    cls = ""
    params = transforms.ChipParams()
    if kind == "positive":
        centre = np.argmin(
            np.hypot(p.boxes[:, 0] - project.patch / 2, p.boxes[:, 1] - project.patch / 2)
        )
        angle, heading = float(p.boxes[centre, 4]), float(p.headings[centre])
        cls = project.classes[int(p.classes[centre])]
        params = transforms.canonical_params(p.boxes[centre], heading)
    image, _, _, _ = transforms.transform_chip(
        p.image.astype(np.float32), [p.valid], p.boxes, p.headings, params, chip
    )
    name = f"{kind}_{n:05d}"
    stem = f"chips/{name}"
    np.save(folder / f"{name}.npy", image.astype(np.float32))
    rgb = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    png = (np.clip(np.moveaxis(rgb, 0, -1), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(png).save(folder / f"{name}.png")
    return {
        "path": f"{stem}.png",
        "array": f"{stem}.npy",
        "label": kind,
        "class": cls,
        "image": Path(project.scenes[p.scene].path).name,
        "angle_deg": angle,
        "heading_deg": heading,
    }
