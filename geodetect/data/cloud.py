"""A LAZ point cloud matching a rendered scene: terrain, gable roofs, tree crowns, vehicles.

Points are uniform in xy (random jitter), classified by the object drawn under them, with
ASPRS classes 2 ground, 5 high vegetation, 6 building, 1 unclassified (vehicles, confusers).
"""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
import pyproj

from geodetect.atomic import atomic_path
from geodetect.data.scene import Layout

KIND_CODE = {"vehicle": 0, "building": 1, "tree": 2, "confuser": 3}


def terrain(x: np.ndarray, y: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Gentle terrain (m): base, slope of ~1 %, and metre-scale undulation."""
    base, gx, gy, amp, lx, ly, px, py = params
    return (
        base
        + gx * x
        + gy * y
        + amp * np.sin(2 * np.pi * x / lx + px) * np.sin(2 * np.pi * y / ly + py)
    )


def terrain_params(rng: np.random.Generator) -> np.ndarray:
    return np.array(
        [
            rng.uniform(150, 450),
            rng.normal(0, 0.01),
            rng.normal(0, 0.01),
            rng.uniform(0.5, 2.0),
            rng.uniform(150, 400),
            rng.uniform(150, 400),
            rng.uniform(0, 6.3),
            rng.uniform(0, 6.3),
        ]
    )


def synthesize(
    layout: Layout,
    obj_index: np.ndarray,
    ss: int,
    image: np.ndarray,
    gsd: float,
    density: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Points in the local frame (x east, y down, metres): x, y, z, classification, rgb, returns."""
    h_img, w_img = image.shape[:2]
    n = int(rng.poisson(density * layout.width_m * layout.height_m))
    x = rng.uniform(0.0, layout.width_m, n)
    y = rng.uniform(0.0, layout.height_m, n)
    tp = terrain_params(rng)
    ground = terrain(x, y, tp)
    z = ground.copy()
    cls = np.full(n, 2, np.uint8)
    ret = np.ones(n, np.uint8)
    nret = np.ones(n, np.uint8)
    hi = gsd / ss
    o = obj_index[
        np.minimum((y / hi).astype(int), obj_index.shape[0] - 1),
        np.minimum((x / hi).astype(int), obj_index.shape[1] - 1),
    ]
    on = o >= 0
    if on.any() and layout.objects:
        _raise_objects(layout, o, on, x, y, z, cls, ret, nret, tp, rng)
    z += rng.normal(0.0, 0.03, n)
    row = np.minimum((y / gsd).astype(int), h_img - 1)
    col = np.minimum((x / gsd).astype(int), w_img - 1)
    rgb = (image[row, col] * 65535.0).astype(np.uint16)
    return {
        "x": x,
        "y": y,
        "z": z,
        "classification": cls,
        "rgb": rgb,
        "return_number": ret,
        "number_of_returns": nret,
    }


def _raise_objects(layout, o, on, x, y, z, cls, ret, nret, tp, rng) -> None:
    """Lift points that fall on an object to its surface and classify them."""
    objs = layout.objects
    arr = {
        k: np.array([getattr(ob, k) for ob in objs], float)
        for k in ("cx", "cy", "length", "width", "heading", "height", "eave")
    }
    kind = np.array([KIND_CODE[ob.kind] for ob in objs])
    sub = np.array([ob.sub for ob in objs])
    gable = np.isin(sub, ("gable", "shed"))
    base = terrain(arr["cx"], arr["cy"], tp)  # objects stand level on their centre's ground
    idx = np.nonzero(on)[0]
    oi = o[idx]
    hd = np.radians(arr["heading"][oi])
    dx, dy = x[idx] - arr["cx"][oi], y[idx] - arr["cy"][oi]
    along = dx * np.sin(hd) - dy * np.cos(hd)  # towards the front
    perp = dx * np.cos(hd) + dy * np.sin(hd)
    k = kind[oi]
    top = base[oi] + arr["height"][oi]

    # vehicles: cabin full height, bonnet and boot lower
    v = k == KIND_CODE["vehicle"]
    cabin = np.abs(along[v] / arr["length"][oi[v]] + 0.1) < 0.3
    z[idx[v]] = base[oi[v]] + arr["height"][oi[v]] * np.where(cabin, 1.0, 0.65)
    cls[idx[v]] = 1

    # buildings and sheds: gable roofs slope from the ridge down to the eaves
    b = (k == KIND_CODE["building"]) | (k == KIND_CODE["confuser"])
    roof = top[b].copy()
    g = gable[oi[b]]
    slope = 1.0 - np.clip(np.abs(perp[b][g]) / (arr["width"][oi[b]][g] / 2.0), 0, 1)
    eave = base[oi[b]][g] + arr["eave"][oi[b]][g]
    roof[g] = eave + (top[b][g] - eave) * slope
    z[idx[b]] = roof
    cls[idx[b]] = np.where(k[b] == KIND_CODE["building"], 6, 1)

    # trees: an ellipsoid crown; most returns on top, some inside, some reach the ground
    t = k == KIND_CODE["tree"]
    ti = idx[t]
    r = arr["length"][oi[t]] / 2.0
    d2 = np.clip((dx[t] ** 2 + dy[t] ** 2) / r**2, 0, 1)
    rv = np.minimum(0.8 * r, 0.45 * arr["height"][oi[t]])
    centre = top[t] - rv
    surface = centre + rv * np.sqrt(1.0 - d2)
    u = rng.random(ti.size)
    inner = (u >= 0.65) & (u < 0.85)
    reach = u >= 0.85
    zt = surface - np.abs(rng.normal(0, 0.25, ti.size))
    zt[inner] = rng.uniform(centre[inner] - rv[inner] * np.sqrt(1.0 - d2[inner]), surface[inner])
    z[ti] = np.where(reach, z[ti], zt)
    cls[ti] = np.where(reach, 2, 5)
    ret[ti] = np.where(u < 0.65, 1, np.where(inner, 2, 3))
    nret[ti] = 3


def write_laz(
    path: str | Path, pts: dict[str, np.ndarray], x0: float, y_top: float, epsg: int
) -> Path:
    """LAS 1.4 point format 7 (RGB), CRS in a WKT VLR, compressed by lazrs; atomic."""
    mx, my = x0 + pts["x"], y_top - pts["y"]
    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([np.floor(mx.min()), np.floor(my.min()), np.floor(pts["z"].min())])
    header.add_crs(pyproj.CRS.from_epsg(epsg))
    las = laspy.LasData(header)
    las.x, las.y, las.z = mx, my, pts["z"]
    las.classification = pts["classification"]
    las.return_number = pts["return_number"]
    las.number_of_returns = pts["number_of_returns"]
    las.red, las.green, las.blue = pts["rgb"][:, 0], pts["rgb"][:, 1], pts["rgb"][:, 2]
    las.intensity = (pts["rgb"].astype(np.uint32).sum(axis=1) // 3).astype(np.uint16)
    las.gps_time = np.arange(len(mx), dtype=np.float64) * 1e-5
    las.point_source_id = np.ones(len(mx), np.uint16)
    with atomic_path(path) as tmp:
        las.write(str(tmp))
    return Path(path)
