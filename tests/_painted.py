"""A tiny painted scene with exactly known objects (for samples/train tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine

from geodetect import geometry
from geodetect.boxes import labels_frame
from geodetect.labels import write_vector
from geodetect.raster import Grid

GSD = 0.25
ORIGIN = (500_000.0, 5_000_000.0)
CRS = "EPSG:32633"


def grid(size: int) -> Grid:
    return Grid(
        rasterio.crs.CRS.from_string(CRS),
        Affine(GSD, 0, ORIGIN[0], 0, -GSD, ORIGIN[1]),
        size,
        size,
    )


def paint(size: int, boxes: np.ndarray, headings: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    """(3, size, size): grey ground, bright cars with a darker front third (a windshield)."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    noise = np.random.default_rng(size).uniform(40.0, 90.0, (size, size)).astype(np.float32)
    img = np.repeat(noise[None], 3, axis=0)  # grey, textured ground
    for b, h in zip(boxes, headings, strict=True):
        body = shapely.contains_xy(geometry.box_polygons(b[None])[0], xs, ys)
        img[:, body] = np.array([250.0, 60.0, 50.0])[:, None]
        if np.isfinite(h):
            d = geometry.direction(h, y_down=True)
            ahead = (xs - b[0]) * d[0] + (ys - b[1]) * d[1] > b[2] / 6
            img[:, body & ahead] = np.array([10.0, 10.0, 10.0])[:, None]
    if dtype == "uint16":
        return (img * 16 + 5).astype(np.uint16)
    return img.astype(dtype)


def write_scene(
    folder: Path,
    boxes: np.ndarray,
    headings: np.ndarray,
    negatives: list,
    size: int = 256,
    dtype: str = "uint8",
    classes: list[str] | None = None,
    name: str = "scene",
) -> tuple[Path, Path]:
    """(image.tif, labels.gpkg) for painted cars and negative polygons (pixel frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = grid(size)
    img = paint(size, boxes, headings, dtype)
    path = folder / f"{name}.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype=dtype,
        crs=g.crs,
        transform=g.transform,
    ) as dst:
        dst.write(img)
    frame = labels_frame(boxes, classes or ["car"] * len(boxes), headings, negatives, g, path.name)
    return path, write_vector(frame, folder / f"{name}_labels.gpkg")
