"""Pure oriented-box maths (see DESIGN.md for conventions): conversions, rotated IoU, rotated NMS.

Boxes are float64 arrays (N, 5): [cx, cy, length, width, angle_deg], angle of the long axis
clockwise from grid north in [0, 180). `y_down=True` is the pixel frame, False the map frame.
"""

from __future__ import annotations

import numpy as np


def wrap_angle(angle_deg: np.ndarray | float) -> np.ndarray:
    """Orientation of an axis (no front) into [0, 180)."""
    raise NotImplementedError


def wrap_heading(heading_deg: np.ndarray | float) -> np.ndarray:
    """Direction (with a front) into [0, 360)."""
    raise NotImplementedError


def angle_difference(a: np.ndarray | float, b: np.ndarray | float, period: float = 180.0) -> np.ndarray:
    """Smallest absolute difference between angles of the given period (180 axes, 360 headings)."""
    raise NotImplementedError


def box_corners(boxes: np.ndarray, y_down: bool = True, headings: np.ndarray | None = None) -> np.ndarray:
    """Corners (N, 4, 2): front-left, front-right, back-right, back-left along the angle (or heading)."""
    raise NotImplementedError


def boxes_from_corners(corners: np.ndarray, y_down: bool = True, rtol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 5) and the heading implied by corner order (N,) from (N, 4, 2) rectangle corners.

    Raises ValueError naming the first index that is not a rectangle.
    """
    raise NotImplementedError


def rotated_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IoU matrix (N, M) of oriented boxes (same frame), axis-aligned pre-filter first."""
    raise NotImplementedError


def rotated_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Indices kept by greedy rotated NMS, highest score first (per class when `classes` given)."""
    raise NotImplementedError
