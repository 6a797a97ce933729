"""The training project: scenes on their working grids, their labels, classes, validation split.

Everything `train`, `samples` and the plugin's samples job derive from the inputs, opened and
checked once up front (bands, GSD, point clouds, classes, fronts, orientation-free classes),
before any pixel is read. Patches and chips are `samples.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geodetect import transforms
from geodetect.config import Config
from geodetect.errors import InputError, LabelError
from geodetect.raster import Grid
from geodetect.targets import MULTIPLE


@dataclass
class Scene:
    """One training scene on its working grid with its labels in that grid's pixel frame."""

    path: str
    grid: Grid
    boxes: np.ndarray  # (N, 5) positives
    classes: np.ndarray  # (N,) class index
    headings: np.ndarray  # (N,) NaN without a front
    negatives: list  # shapely polygons (pixel frame)
    stats: dict[str, Any]
    cloud: str | None = None
    pos_val: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    neg_val: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class Project:
    """Everything `train` and `samples` derive from the inputs, checked up front."""

    scenes: list[Scene]
    classes: list[str]
    has_front: list[bool]
    bands: list[int]
    elevation: bool
    gsd: float
    config: Config
    upright: list[bool] = field(default_factory=list)  # classes without orientation

    @property
    def in_channels(self) -> int:
        return len(self.bands) + int(self.elevation)

    @property
    def chip(self) -> int:
        return int(math.ceil(self.config.data.chip_size / MULTIPLE) * MULTIPLE)

    @property
    def patch(self) -> int:
        return 2 * self.chip


def scene_bands(info: Any, wanted: list[int] | None) -> list[int]:
    """The bands to read (1-based): `wanted` (data.bands) checked against the file, else its
    first three data bands (alpha left out)."""
    if wanted:
        bad = [b for b in wanted if not 1 <= b <= info.count]
        if bad:
            raise InputError(
                f"{info.path}: has {info.count} band(s), no band {bad[0]} (data.bands)"
            )
        return list(wanted)
    data = list(info.data_bands) or list(range(1, info.count + 1))
    return data[:3]


def _elevation(mode: str, pointclouds: list[str] | None, n_images: int) -> bool:
    if pointclouds and len(pointclouds) != n_images:
        raise InputError(
            f"--pointcloud: {len(pointclouds)} given for {n_images} image(s); give one per IMAGE"
        )
    if mode == "on" and not pointclouds:
        raise InputError("data.elevation is 'on' but no --pointcloud was given")
    return bool(pointclouds) and mode != "off"


def load_project(
    images: list[str],
    labels: str,
    pointclouds: list[str] | None,
    config: Config,
) -> Project:
    """Open scenes and labels, pick bands/GSD/classes, and check the bad-input cases."""
    from geodetect.labels import labels_for_grid, read_labels
    from geodetect.raster import open_raster, working_grid
    from geodetect.remote import display_name

    if not images:
        raise InputError("give at least one IMAGE")
    infos = [open_raster(p) for p in images]
    elevation = _elevation(config.data.elevation, pointclouds, len(images))
    if elevation:
        from geodetect.pointcloud import open_cloud

        for cloud in pointclouds or []:
            open_cloud(cloud)
    bands = scene_bands(infos[0], config.data.bands)
    for info in infos[1:]:
        if scene_bands(info, config.data.bands) != bands:
            raise InputError(f"{info.path}: has other bands than {infos[0].path}; set data.bands")
    gsd = float(config.data.gsd or np.median([i.gsd for i in infos]))
    gdf = read_labels(labels, scenes=infos)  # scenes: for pixel-frame formats (DOTA, COCO…)
    per_scene = []
    for info in infos:
        grid = working_grid(info, gsd)
        per_scene.append((info, grid, labels_for_grid(gdf, grid, display_name(info.path))))
    names = sorted({c for _, _, sl in per_scene for c in sl.classes})
    n_neg = sum(len(sl.negatives) for _, _, sl in per_scene)
    if not names and not n_neg:
        raise LabelError(f"{labels}: no label falls on any of the scenes; check the CRS and extent")
    if not names:
        raise LabelError(f"{labels}: has no positive samples on the scenes; draw some objects")
    counts = {c: sum(sl.classes.count(c) for _, _, sl in per_scene) for c in names}
    lonely = [c for c, n in counts.items() if n < 2]
    if lonely:
        raise LabelError(
            f"{labels}: class '{lonely[0]}' has only one sample; label at least two of each class"
        )
    has_front = [
        any(
            np.isfinite(sl.headings[i])
            for _, _, sl in per_scene
            for i, c in enumerate(sl.classes)
            if c == name
        )
        for name in names
    ]
    upright = _upright_classes(config.model.orientation_free, names, has_front, per_scene, labels)
    scenes = []
    for k, (info, grid, sl) in enumerate(per_scene):
        stats = transforms.scene_stats(info.path, bands, config, config.data.stats_pixels)
        cls = np.array([names.index(c) for c in sl.classes], np.int64)
        heads = (
            np.where(np.asarray(has_front)[cls], sl.headings, np.nan) if len(cls) else sl.headings
        )
        cloud = str(pointclouds[k]) if elevation and pointclouds else None
        scenes.append(
            Scene(info.path, grid, sl.boxes, cls, heads, list(sl.negatives), stats, cloud)
        )
    return Project(scenes, names, has_front, bands, elevation, gsd, config, upright)


UPRIGHT_TOL_DEG = 1.0  # an axis-aligned label reprojected between UTM zones turns < 1 degree


def _upright_classes(
    setting: Any, names: list[str], has_front: list[bool], per_scene: list, labels: str
) -> list[bool]:
    """Which classes have no orientation: declared by name, or (auto) every class without a
    front whose positives are all axis-aligned rectangles, as round objects are drawn."""
    if setting != "auto":
        unknown = [c for c in setting if c not in names]
        if unknown:
            raise LabelError(
                f"model.orientation_free names class '{unknown[0]}', which has no positive "
                f"in {labels} (classes: {', '.join(names)})"
            )
        fronted = [c for c in setting if has_front[names.index(c)]]
        if fronted:
            raise LabelError(
                f"class '{fronted[0]}' has heading_deg values, so it has an orientation; "
                "remove it from model.orientation_free"
            )
        return [c in setting for c in names]
    out = []
    for k, name in enumerate(names):
        angles = np.concatenate(
            [
                sl.boxes[np.asarray([c == name for c in sl.classes], bool), 4]
                for _, _, sl in per_scene
                if len(sl.classes)
            ]
            or [np.zeros(0)]
        )
        off = np.abs(((angles + 45.0) % 90.0) - 45.0)  # distance to 0 / 90 degrees
        out.append(bool(len(angles)) and not has_front[k] and bool((off <= UPRIGHT_TOL_DEG).all()))
    return out


def split_validation(project: Project, fraction: float, seed: int) -> None:
    """Hold out a share of each class's positives and of the negative regions (seeded)."""
    rng = np.random.default_rng([seed, 7])
    for s in project.scenes:
        s.pos_val = np.zeros(len(s.boxes), bool)
        s.neg_val = np.zeros(len(s.negatives), bool)
    if fraction <= 0:
        return
    for k in range(len(project.classes)):
        items = [
            (i, j) for i, s in enumerate(project.scenes) for j in np.nonzero(s.classes == k)[0]
        ]
        n_val = min(len(items) - 1, max(1, round(fraction * len(items))))
        for idx in rng.permutation(len(items))[:n_val]:
            i, j = items[idx]
            project.scenes[i].pos_val[j] = True
    negs = [(i, j) for i, s in enumerate(project.scenes) for j in range(len(s.negatives))]
    if len(negs) >= 2:
        n_val = min(len(negs) - 1, max(1, round(fraction * len(negs))))
        for idx in rng.permutation(len(negs))[:n_val]:
            i, j = negs[idx]
            project.scenes[i].neg_val[j] = True
