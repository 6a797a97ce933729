"""Grids and random oriented boxes shared by the label and box tests."""

from __future__ import annotations

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from geodetect import geometry
from geodetect.raster import Grid

UTM = CRS.from_epsg(32633)


def utm_grid(width: int, height: int, gsd: float = 0.5) -> Grid:
    return Grid(UTM, Affine(gsd, 0, 500_000.0, 0, -gsd, 4_000_000.0), width, height)


def north_up(res: float = 0.5) -> Affine:
    return Affine(res, 0.0, 500_000.0, 0.0, -res, 5_320_000.0)  # near 48 N, 15 E


def rotated(deg: float = 30.0, res: float = 0.5) -> Affine:
    return (
        Affine.translation(500_000.0, 5_320_000.0) * Affine.rotation(deg) * Affine.scale(res, -res)
    )


TRANSFORMS = {"north_up": north_up(), "rotated": rotated(), "rotated_neg": rotated(-71.0, 0.3)}


def random_boxes(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    length = rng.uniform(4, 30, n)
    width = length * rng.uniform(0.2, 0.9, n)
    angle = rng.uniform(0, 180, n)
    edge = [0.0, 1e-9, 179.9999999, 90.0, 180.0 - 1e-12]  # the 0/180 wrap and the axes
    angle[: len(edge)] = edge[:n]
    xy = rng.uniform(20, size - 20, (n, 2))
    return np.column_stack([xy, length, width, geometry.wrap_angle(angle)])


def assert_same_boxes(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=tol)
    assert geometry.angle_difference(a[:, 4], b[:, 4]).max() < tol
