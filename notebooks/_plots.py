"""Plotting helpers shared by the notebooks: matplotlib only, drawn in the scene's map frame.

The notebooks import it as `_plots` (Jupyter puts the notebook's folder on `sys.path`;
tests/test_notebooks.py puts notebooks/ on PYTHONPATH, as it runs them in a scratch folder).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import rasterio

CLASS_COLOURS = {"vehicle": "yellow", "building": "magenta"}


def map_axes(ax, title=None):
    """Axis labels in map units and plain coordinates (no "+4.65e6" offset)."""
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=8)
    if title:
        ax.set_title(title)
    return ax


def show_scene(path, ax=None, title=None, cmap=None):
    """Draw a scene (first three bands, stretched 2-98 %; one band in `cmap`) in map coordinates."""
    if ax is None:
        ax = plt.subplots(figsize=(8, 8))[1]
    with rasterio.open(path) as src:
        data = src.read(list(range(1, min(3, src.count) + 1)), masked=True).astype("float32")
        b = src.bounds
    lo, hi = np.nanpercentile(data.filled(np.nan), [2, 98], axis=(1, 2))
    img = np.clip((data - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1)
    img = img.filled(0)
    shown = np.moveaxis(img, 0, -1) if len(img) == 3 else img[0]
    ax.imshow(shown, extent=(b.left, b.right, b.bottom, b.top), cmap=cmap)
    ax.set(xlim=(b.left, b.right), ylim=(b.bottom, b.top))
    ax.set_autoscale_on(False)  # shapes drawn later (objects on the edge) keep the scene's frame
    return map_axes(ax, title or Path(path).name)


def long_side(geom):
    """Length of an oriented rectangle (its longest edge)."""
    xy = np.asarray(geom.exterior.coords)[:5]
    return float(np.max(np.hypot(*np.diff(xy, axis=0).T)))


def draw_boxes(ax, gdf, colour=None, linewidth=1.2, arrows=True):
    """Oriented rectangles (per-class colours) and arrows to the front where heading_deg is set.

    heading_deg is clockwise from grid north, so in map coordinates (y up) the front is
    (sin h, cos h) from the centre. Arrows are one object length long, from the centre.
    """
    labels = ax.get_xlabel(), ax.get_ylabel()
    for cls, rows in gdf.groupby("class"):
        c = colour or CLASS_COLOURS.get(cls, "white")
        rows.boundary.plot(ax=ax, color=c, linewidth=linewidth)
        ax.set(xlabel=labels[0], ylabel=labels[1])  # geopandas names the CRS axes
        if not arrows or "heading_deg" not in rows:
            continue
        rows = rows[rows["heading_deg"].notna()]
        if rows.empty:
            continue
        h = np.radians(rows["heading_deg"].to_numpy(float))
        length = np.array([long_side(g) for g in rows.geometry])
        centre = rows.geometry.centroid
        ax.quiver(
            centre.x,
            centre.y,
            np.sin(h) * length,
            np.cos(h) * length,
            color=c,
            angles="xy",
            scale_units="xy",
            scale=1,
            width=0.003,
            headwidth=4,
            headlength=4,
            headaxislength=3.5,
        )
    return ax


def legend(ax, entries):
    """A legend from {label: colour}."""
    from matplotlib.patches import Patch

    handles = [Patch(edgecolor=c, facecolor="none", label=k) for k, c in entries.items()]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
