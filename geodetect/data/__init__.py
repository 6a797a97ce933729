"""Synthetic sample data: realistic aerial scenes, matching point clouds and labels.

Used by `geodetect demo`, the tests, the notebooks and napari's sample data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geodetect.errors import CRSError, InputError

DTYPES = ("uint8", "uint16", "float32")


@dataclass(frozen=True)
class SampleData:
    """Paths of one generated scene and its companions."""

    image: Path  # RGB GeoTIFF
    cloud: Path  # LAZ point cloud on the same footprint
    truth: Path  # every object, contract label format (positives only)
    labels: Path  # sparse labels: ~40% of objects + negative regions


def make_sample_data(
    out_dir: str | Path,
    size: int = 1024,
    gsd: float = 0.25,
    seed: int = 0,
    epsg: int = 32633,
    dtype: str = "uint8",
    label_fraction: float = 0.4,
    cloud: bool = True,
    colour_cast: tuple[float, float, float] | None = None,
    name: str = "scene",
    density: float = 6.0,
    traffic: float = 1.0,
) -> SampleData:
    """Generate a synthetic scene (vehicles with windshields, buildings, trees, roads, shadows,
    confusers), a LAZ cloud, truth and sparse labels. A 1024² scene takes seconds.

    Args:
        out_dir: existing or new folder; files are `{name}.tif`, `{name}.laz`,
            `{name}_truth.gpkg`, `{name}_labels.gpkg`.
        size: image width and height in pixels.
        gsd: ground sample distance in CRS units (metres) per pixel.
        seed: the same seed gives the same scene, cloud and labels.
        epsg: a projected CRS; the origin is placed inside its area of use.
        dtype: uint8 (0-255), uint16 (12-bit range) or float32 (reflectance 0-1).
        label_fraction: share of each class labelled as positives in the sparse labels.
        cloud: also write the LAZ point cloud (`SampleData.cloud` is still its path).
        colour_cast: per-band gains (r, g, b) applied to the image, e.g. (1.1, 1.0, 0.85).
        density: point cloud density in points per square metre.
        traffic: vehicles per area relative to the default suburb (4.4: ~4,300 vehicles on
            a 4096² scene at 0.25 m, the dense scene of benchmarks/bench_infer.py).
    """
    from geodetect.data import cloud as cloud_mod
    from geodetect.data import draw, scene, truth

    crs = _check(size, gsd, dtype, label_fraction, colour_cast, density, epsg)
    if not traffic > 0:
        raise InputError(f"traffic={traffic}: the vehicle multiplier must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout_rng, draw_rng, cloud_rng, label_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    x0, y_top = _origin(crs, layout_rng)
    layout = scene.make_layout(size * gsd, size * gsd, layout_rng, traffic)
    rendered = draw.render(layout, size, size, gsd, draw_rng, keep_index=cloud)
    img = rendered.image
    if colour_cast is not None:
        img = np.clip(img * np.asarray(colour_cast, np.float32), 0.0, 1.0)

    paths = SampleData(
        image=out / f"{name}.tif",
        cloud=out / f"{name}.laz",
        truth=out / f"{name}_truth.gpkg",
        labels=out / f"{name}_labels.gpkg",
    )
    _write_image(paths.image, _to_dtype(img, dtype), crs, x0, y_top, gsd)
    if cloud:
        pts = cloud_mod.synthesize(
            layout, rendered.obj_index, rendered.ss, img, gsd, density, cloud_rng
        )
        cloud_mod.write_laz(paths.cloud, pts, x0, y_top, epsg)

    rows = truth.positive_rows(layout, paths.image.name)
    labelled = truth.choose_labelled(rows, label_fraction, label_rng)
    negs = truth.negatives(layout, labelled, label_rng)
    sparse = [r for r in rows if r["_obj"] in labelled]
    sparse += [
        {
            "label": "negative",
            "class": None,
            "image": paths.image.name,
            "heading_deg": None,
            "geometry": g,
        }
        for g in negs
    ]
    _write_vector(truth.frame(rows, x0, y_top, epsg), paths.truth)
    _write_vector(truth.frame(sparse, x0, y_top, epsg), paths.labels)
    return paths


def make_training_set(
    out_dir: str | Path,
    seeds: tuple[int, ...] = (0, 7, 8),
    size: int = 1448,
    name: str = "train",
    **kwargs,
) -> tuple[list[SampleData], Path]:
    """Several scenes (one per seed) and one sparse label file covering them all, as an
    analyst who labels a few tiles of an area saves them: each row names its scene in
    `image`. Several tiles teach more than one big scene: each scene has its own light, sun
    and roof palette, and a detector trained on a single scene learns that scene.

    Returns the scenes and `{out_dir}/{name}_labels.gpkg`. Other arguments as make_sample_data.
    """
    import geopandas as gpd
    import pandas as pd

    if not seeds:
        raise InputError("seeds: give at least one scene seed")
    out = Path(out_dir)
    scenes = [make_sample_data(out, size=size, seed=s, name=f"{name}_{s}", **kwargs) for s in seeds]
    frames = [gpd.read_file(d.labels) for d in scenes]
    labels = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    path = out / f"{name}_labels.gpkg"
    _write_vector(labels, path)
    return scenes, path


def make_pair(
    out_dir: str | Path, seed: int = 0, size: int = 1024, **kwargs
) -> tuple[SampleData, SampleData]:
    """A training scene and a test scene with different seeds (for the demo and notebooks)."""
    train = make_sample_data(out_dir, size=size, seed=seed, name="train", **kwargs)
    test = make_sample_data(out_dir, size=size, seed=seed + 1000, name="test", **kwargs)
    return train, test


def _check(size, gsd, dtype, label_fraction, colour_cast, density, epsg):
    """Validate arguments; returns the pyproj CRS."""
    import pyproj

    if int(size) != size or size < 64:
        raise InputError(f"size={size}: use a whole number of pixels, at least 64")
    if not gsd > 0:
        raise InputError(f"gsd={gsd}: the ground sample distance must be positive")
    if dtype not in DTYPES:
        raise InputError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if not 0.0 <= label_fraction <= 1.0:
        raise InputError(f"label_fraction={label_fraction}: use a value between 0 and 1")
    if colour_cast is not None and (len(colour_cast) != 3 or min(colour_cast) <= 0):
        raise InputError(f"colour_cast={colour_cast}: give three positive band gains (r, g, b)")
    if not density > 0:
        raise InputError(f"density={density}: points per square metre must be positive")
    try:
        crs = pyproj.CRS.from_epsg(epsg)
    except pyproj.exceptions.CRSError as exc:
        raise CRSError(f"EPSG:{epsg} is not a known CRS") from exc
    if not crs.is_projected:
        raise CRSError(f"EPSG:{epsg} is not projected; sample scenes need metres, e.g. a UTM zone")
    return crs


def _origin(crs, rng: np.random.Generator) -> tuple[float, float]:
    """A plausible top-left corner: near the centre of the CRS's area of use, on a 100 m grid."""
    import pyproj

    aou = crs.area_of_use
    lon, lat = (
        (0.0, 45.0) if aou is None else ((aou.west + aou.east) / 2, (aou.south + aou.north) / 2)
    )
    lat = float(np.clip(lat, -60.0, 60.0))
    x, y = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    jitter = rng.integers(-50, 50, 2) * 100.0
    return float(np.round(x, -3) + jitter[0]), float(np.round(y, -3) + jitter[1])


def _to_dtype(img: np.ndarray, dtype: str) -> np.ndarray:
    """(H, W, 3) reflectance -> (3, H, W) in the requested dtype's usual range."""
    chw = np.moveaxis(img, -1, 0)
    if dtype == "uint8":
        return np.round(chw * 255.0).astype(np.uint8)
    if dtype == "uint16":  # a 12-bit sensor: dark offset plus gain
        return np.round(chw * 4000.0 + 50.0).astype(np.uint16)
    return np.ascontiguousarray(chw, dtype=np.float32)


def _write_image(path: Path, chw: np.ndarray, crs, x0: float, y_top: float, gsd: float) -> None:
    from affine import Affine
    from rasterio.crs import CRS

    from geodetect.geotiff import write_raster
    from geodetect.raster import Grid

    grid = Grid(
        CRS.from_user_input(crs.to_wkt()),
        Affine(gsd, 0.0, x0, 0.0, -gsd, y_top),
        chw.shape[2],
        chw.shape[1],
    )
    write_raster(path, chw, grid)


def _write_vector(gdf, path: Path) -> None:
    from geodetect.labels import write_vector

    try:
        write_vector(gdf, path)
    except NotImplementedError:  # labels.py still a stub
        from geodetect.atomic import atomic_path

        with atomic_path(path) as tmp:
            gdf.to_file(tmp, driver="GPKG", layer=path.stem)
