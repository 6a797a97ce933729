"""Hand-made shapes for tests, built without geodetect so they check its geometry."""

from __future__ import annotations

import math

import numpy as np
import shapely


def rect(cx: float, cy: float, length: float, width: float, angle: float) -> shapely.Polygon:
    """Map-frame (y north) oriented rectangle, long axis at `angle` degrees clockwise from
    north, corners front-left, front-right, back-right, back-left (DESIGN.md)."""
    a = math.radians(angle)
    u = np.array([math.sin(a), math.cos(a)]) * length / 2
    v = np.array([math.cos(a), -math.sin(a)]) * width / 2
    c = np.array([cx, cy])
    return shapely.Polygon([c + u - v, c + u + v, c - u + v, c - u - v])
