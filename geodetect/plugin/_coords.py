"""The one napari coordinate convention every geodetect layer follows.

World frame (napari world (row, col)), in CRS units:

* georeferenced layers: world = (−y, x) of the map frame. North is up on screen, east is
  right, one world unit is one CRS unit, so several scenes, a DSM and a cloud in one CRS line
  up without resampling. Map (x, y) = (col, −row).
* layers without a CRS (rasterio's pixel frame, x = col, y = row, y already grows down):
  world = (y, x) = (row, col) in pixels.

Image data index (i, j) is the *centre* of pixel (row i, col j), i.e. the pixel-frame point
(x, y) = (j + 0.5, i + 0.5) (DESIGN.md); the image layer's `affine` (or scale/translate when
the geotransform is north-up) maps data index to world exactly, rotated transforms included.

Vector layers (shapes, points, vectors) keep *small* data coordinates and carry the large map
offset in `translate`: GPU vertex buffers are float32, which cannot hold UTM northings to a
centimetre, while napari composes layer transforms in float64 on the CPU.
"""

from __future__ import annotations

import numpy as np
from affine import Affine

KEY = "geodetect"  # layer.metadata[KEY] holds what the plugin knows about a layer


def row_sign(georeferenced: bool) -> float:
    """world row = sign · y: −1 for a map frame (y north), +1 for the pixel frame (y down)."""
    return -1.0 if georeferenced else 1.0


def map_to_world(xy: np.ndarray, georeferenced: bool) -> np.ndarray:
    """Map/pixel-frame points (N, 2) (x, y) -> napari world (N, 2) (row, col)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.stack([row_sign(georeferenced) * xy[:, 1], xy[:, 0]], axis=1)


def world_to_map(rc: np.ndarray, georeferenced: bool) -> np.ndarray:
    """napari world (N, 2) (row, col) -> map/pixel-frame (N, 2) (x, y)."""
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    return np.stack([rc[:, 1], row_sign(georeferenced) * rc[:, 0]], axis=1)


def pixel_to_map(xy_px: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel-frame points (N, 2) (x=col, y=row, corner origin) -> map (N, 2) (geotransform)."""
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    a, b, c, d, e, f = tuple(transform)[:6]
    return np.stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f], axis=1)


def map_to_pixel(xy: np.ndarray, transform: Affine) -> np.ndarray:
    """Map points (N, 2) -> pixel-frame (N, 2) (x=col, y=row)."""
    return pixel_to_map(xy, ~transform)


def image_affine(transform: Affine, georeferenced: bool) -> np.ndarray:
    """3×3 matrix taking image data index (row i, col j, 1) to world (row, col, 1).

    Pixel frame (x, y) = (j + ½, i + ½); map = transform · (x, y); world = (s·y_map, x_map).
    """
    a, b, c, d, e, f = tuple(transform)[:6]
    s = row_sign(georeferenced)
    # world_row = s(d x + e y + f), world_col = a x + b y + c, with x = j + ½, y = i + ½
    return np.array(
        [
            [s * e, s * d, s * (f + 0.5 * (d + e))],
            [b, a, c + 0.5 * (a + b)],
            [0.0, 0.0, 1.0],
        ]
    )


def image_placement(transform: Affine, georeferenced: bool) -> dict:
    """napari layer kwargs placing an image: scale/translate when axis-aligned, else `affine`."""
    m = image_affine(transform, georeferenced)
    if m[0, 1] == 0 and m[1, 0] == 0:
        return {"scale": (m[0, 0], m[1, 1]), "translate": (m[0, 2], m[1, 2])}
    return {"affine": m}


def world_origin(transform: Affine, georeferenced: bool) -> tuple[float, float]:
    """World (row, col) of the grid's top-left corner: the translate of its vector layers."""
    x, y = transform.c, transform.f
    row, col = map_to_world(np.array([[x, y]]), georeferenced)[0]
    return (float(row), float(col))


def data_to_map(
    data_rc: np.ndarray, translate: tuple[float, float], georeferenced: bool
) -> np.ndarray:
    """Vector-layer data (N, 2) (row, col) with a pure `translate` -> map (N, 2) (x, y)."""
    rc = np.asarray(data_rc, dtype=np.float64).reshape(-1, 2) + np.asarray(translate, np.float64)
    return world_to_map(rc, georeferenced)


def map_to_data(xy: np.ndarray, translate: tuple[float, float], georeferenced: bool) -> np.ndarray:
    """Map (N, 2) (x, y) -> vector-layer data (N, 2) (row, col) for a layer with `translate`."""
    return map_to_world(xy, georeferenced) - np.asarray(translate, np.float64)


def format_map(xy: tuple[float, float], crs_name: str | None) -> str:
    """Status text for a map position: 'x=…, y=… EPSG:…' (pixels when no CRS)."""
    x, y = xy
    if crs_name is None:
        return f"x={x:.2f} px, y={y:.2f} px"
    return f"x={x:.2f}, y={y:.2f} {crs_name}"
