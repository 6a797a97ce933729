"""Scenes → inference tasks: every input checked first, then each scene cut into blocks of
tile rows.

A `Task` is picklable (a scheduler ships it to a worker) and holds no pixels: the scene's
path, its working grid at the model's GSD, the tile offsets and the colour statistics. Both
`detection.detect` (one scene, in memory) and `inference.infer` (many scenes, one file) plan
here, so they read exactly the same tiles.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geodetect.aoi import clip_task, in_crs, load_area
from geodetect.config import InferConfig
from geodetect.errors import CRSError, InputError, ModelError
from geodetect.modelinfo import ModelInfo
from geodetect.raster import Grid

TASK_ROWS_PX = 4096  # height of a task's block of tile rows
TASK_MAX_PX = 64_000_000  # and its area: bounds the per-task nDSM (float32) to ~256 MB


@dataclass(frozen=True)
class Settings:
    """Resolved inference parameters (config from the model file, then explicit overrides).

    Every field but `batch_size` goes into the resume key (`inference.infer_items`): adding
    one changes every key.
    """

    tile: int
    overlap: int
    batch_size: int
    threshold: float
    nms_iou: float
    tta: bool
    max_det: int = 500  # per tile; resolve_settings scales it with the tile's area


MAX_DET_PER_512 = 500  # detections kept per 512² of tile: a 1024² tile keeps 2,000


@dataclass(frozen=True)
class Task:
    """A block of tile rows of one scene; picklable, so a scheduler can ship it to a worker."""

    image: str
    pointcloud: str | None
    grid: Grid  # working grid at the model GSD
    windows: tuple[tuple[int, int], ...]  # (col_off, row_off) of tiles of side `tile`
    stats: dict | None  # scene colour statistics (None: the model's)
    tile: int = 512  # tile side actually read (a scene smaller than the tile gets one tile)
    index: int = 0
    n_tasks: int = 1
    aoi: Any = None  # area of interest in the grid's CRS: detections kept by centre (aoi.py)
    group: str | None = None  # merge key when not the scene (a mosaic of files in many CRSs)
    sources: tuple | None = None  # a mosaic VRT's files, to name detections (mosaic.py)


def resolve_settings(info: ModelInfo, **overrides: Any) -> Settings:
    """InferConfig saved in the model file, with the non-None overrides applied and checked."""
    values = saved_infer(info.config).model_dump()
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = InferConfig.model_validate(values)
    except Exception as exc:
        raise InputError(f"infer settings: {str(exc).splitlines()[-2].strip()}") from None
    tile = int(math.ceil(cfg.tile / info.multiple) * info.multiple)
    if cfg.overlap >= tile // 2:
        raise InputError(f"--overlap {cfg.overlap} must be less than half the tile ({tile} px)")
    max_det = max(MAX_DET_PER_512, round(MAX_DET_PER_512 * (tile / 512) ** 2))
    return Settings(tile, cfg.overlap, cfg.batch_size, cfg.threshold, cfg.nms_iou, cfg.tta, max_det)


def saved_infer(config: dict | None) -> InferConfig:
    """The infer section a model file was saved with, read on its own, keys this version does
    not know dropped.

    A key this version does not know, anywhere in the saved config (a model from a newer or
    an experimental version), must not cost the model its infer settings: validating the
    whole config once dropped a model's TTA and gave Yellowstone AP@0.4 0.47 instead of 0.54.
    """
    section = (config or {}).get("infer")
    if not isinstance(section, dict):
        return InferConfig()
    try:
        return InferConfig.model_validate(
            {k: v for k, v in section.items() if k in InferConfig.model_fields}
        )
    except Exception:  # a value this version rejects: its defaults, as for a foreign file
        return InferConfig()


def check_scene(image: str, info: ModelInfo) -> Any:
    """Open a scene and check it can feed the model; returns its RasterInfo."""
    from geodetect.raster import open_raster

    raster = open_raster(image)
    if raster.count < max(info.bands):
        raise ModelError(
            f"{image}: has {raster.count} band(s) but the model reads bands {list(info.bands)}; "
            "give a scene with the bands it was trained on"
        )
    return raster


def _check_cloud(cloud: str, grid: Grid, image: str) -> None:
    """The cloud must overlap the scene, or the elevation channel would be empty."""
    from geodetect.pointcloud import open_cloud

    info = open_cloud(cloud)
    left, bottom, right, top = grid.bounds
    minx, miny, maxx, maxy = info.bounds
    if grid.crs is not None and info.crs is not None and info.crs != grid.crs:
        from pyproj import Transformer

        tr = Transformer.from_crs(info.crs, grid.crs, always_xy=True)
        minx, miny, maxx, maxy = tr.transform_bounds(minx, miny, maxx, maxy)
    if maxx <= left or minx >= right or maxy <= bottom or miny >= top:
        raise InputError(f"{cloud}: does not overlap {image}; give the point cloud of that scene")


def _scene_stats(image: str, info: ModelInfo) -> dict | None:
    """Colour statistics of the scene when the model normalises per scene, else None."""
    from geodetect.transforms import scene_stats

    if info.stats_mode != "scene":
        return None
    return scene_stats(image, list(info.bands), info.percentiles, info.stats_pixels)


def even_tile(width: int, height: int, tile: int, overlap: int, multiple: int) -> int:
    """The smallest tile side, a multiple of `multiple` and at most `tile`, that covers the
    grid with as few tiles as `tile` does.

    Tiles of the full side leave the last row and column flush with the far edge, overlapping
    their neighbours by far more than `overlap` (a 4096² scene in 1024² tiles: 25 tiles,
    1.56× its pixels); spreading that slack over every tile cuts the pixels run (928²: 1.28×)
    at the same tile count, overlap and memory bound.
    """
    from geodetect.raster import tile_starts

    side = math.ceil(max(width, height) / multiple) * multiple
    tile = min(tile, side)
    need = math.ceil((2 * overlap + 1) / multiple) * multiple  # overlap < half the tile
    for size in (width, height):
        n = len(tile_starts(size, tile, tile - min(overlap, tile // 2)))
        span = size if n == 1 else math.ceil((size - overlap) / n) + overlap
        need = max(need, math.ceil(span / multiple) * multiple)
    return min(tile, need)


def plan_tasks(
    images: list[str | Path],
    pointclouds: list[str | Path] | None,
    info: ModelInfo,
    settings: Settings,
    rows_px: int = TASK_ROWS_PX,
    aoi: Any = None,
) -> list[Task]:
    """Check every scene first (nothing is written on bad input), then cut each into tasks.

    With an area of interest (`geodetect.aoi`) only the tiles that meet it stay, and a scene
    with none is neither sampled for statistics nor run."""
    from geodetect.raster import tile_windows, working_grid

    if pointclouds and len(pointclouds) != len(images):
        raise InputError(
            f"--pointcloud: {len(pointclouds)} given for {len(images)} image(s); give one per IMAGE"
        )
    if info.elevation and not pointclouds:
        raise InputError("the model uses elevation: give --pointcloud LAS for every IMAGE")
    clouds = [str(p) for p in pointclouds] if (pointclouds and info.elevation) else None
    tasks: list[Task] = []
    area = load_area(aoi)
    for i, image in enumerate(map(str, images)):
        grid = working_grid(check_scene(image, info), gsd=info.gsd)
        if tasks and (grid.crs is None) != (tasks[0].grid.crs is None):
            raise CRSError(
                f"{image}: {'has no CRS' if grid.crs is None else 'has a CRS'} unlike "
                f"{tasks[0].image}; scenes with and without a CRS need separate --out files"
            )
        if clouds:
            _check_cloud(clouds[i], grid, image)
        tile = even_tile(grid.width, grid.height, settings.tile, settings.overlap, info.multiple)
        wins = tile_windows(grid.width, grid.height, tile, min(settings.overlap, tile // 2))
        offsets = sorted(
            {(int(w.col_off), int(w.row_off)) for w in wins}, key=lambda t: (t[1], t[0])
        )
        rows = sorted({r for _, r in offsets})
        step = max(1, tile - settings.overlap)
        per_task = max(1, min(rows_px // step, TASK_MAX_PX // (grid.width * step)))
        blocks = [rows[j : j + per_task] for j in range(0, len(rows), per_task)]
        cloud = clouds[i] if clouds else None
        mine = [
            Task(image, cloud, grid, tuple(o for o in offsets if b[0] <= o[1] <= b[-1]), None, tile)
            for b in blocks
        ]
        if area is not None:
            geom = in_crs(area, grid.crs)
            mine = [t for t in (clip_task(t, geom) for t in mine) if t.windows]
        if mine:
            stats = _scene_stats(image, info)
            n = len(mine)
            tasks += [
                dataclasses.replace(t, stats=stats, index=j, n_tasks=n) for j, t in enumerate(mine)
            ]
    return tasks
