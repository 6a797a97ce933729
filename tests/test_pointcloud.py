"""pointcloud.py: headers and CRSs, refusing bad files, DSM / DTM / nDSM on grids, thinning."""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
import pytest
from affine import Affine
from laspy.vlrs.known import GeoKeyDirectoryVlr
from pyproj import CRS as PCRS
from pyproj import Transformer
from rasterio.crs import CRS

from geodetect.errors import CRSError, PointCloudError
from geodetect.pointcloud import cloud_grid, open_cloud, rasterize_cloud, read_points
from geodetect.raster import Grid

X0, Y0 = 500_000.0, 4_000_000.0
UTM33 = CRS.from_epsg(32633)


def write_las(
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    cls: np.ndarray | None = None,
    version: str = "1.2",
    fmt: int = 1,
    epsg: int | None = 32633,
) -> Path:
    """A LAS/LAZ (by extension) with exactly these points."""
    header = laspy.LasHeader(point_format=fmt, version=version)
    header.scales = [0.001, 0.001, 0.001]
    header.offsets = [float(np.floor(x.min())), float(np.floor(y.min())), 0.0]
    if epsg is not None:
        header.add_crs(PCRS.from_epsg(epsg))
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, z
    las.classification = (np.ones(len(x)) if cls is None else cls).astype(np.uint8)
    if "red" in header.point_format.dimension_names:
        las.red = las.green = las.blue = np.full(len(x), 65535, np.uint16)
    las.write(path)
    return path


def random_cloud(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = X0 + rng.uniform(0, 20, n)
    y = Y0 + rng.uniform(0, 16, n)
    z = np.round(rng.uniform(0, 10, n), 3)
    cls = np.where(rng.random(n) < 0.4, 2, 1)
    return x, y, z, cls


GRID = Grid(UTM33, Affine(1.0, 0, X0, 0, -1.0, Y0 + 16), 20, 16)


def per_cell(x: np.ndarray, y: np.ndarray, z: np.ndarray, grid: Grid, op) -> np.ndarray:
    """Reference: a plain per-cell loop."""
    cols, rows = (~grid.transform) @ (x, y)
    out = np.full((grid.height, grid.width), np.nan)
    for r in range(grid.height):
        for c in range(grid.width):
            sel = (np.floor(rows) == r) & (np.floor(cols) == c)
            if sel.any():
                out[r, c] = op(z[sel])
    return out


FORMATS = [
    ("c12.las", "1.2", 1),
    ("c14.las", "1.4", 6),
    ("c14.laz", "1.4", 6),
    ("c12.laz", "1.2", 3),
]


@pytest.mark.parametrize(("name", "version", "fmt"), FORMATS)
def test_dsm_is_the_highest_point_per_cell(tmp_path: Path, name: str, version: str, fmt: int):
    x, y, z, cls = random_cloud()
    path = write_las(tmp_path / name, x, y, z, cls, version, fmt)
    info = open_cloud(path)
    assert info.crs == UTM33 and info.count == 4000 and info.version == version
    assert info.point_format == fmt and info.has_rgb == (fmt == 3)
    dsm = rasterize_cloud(path, GRID, "dsm")
    assert dsm.dtype == np.float32 and dsm.shape == (16, 20)
    np.testing.assert_allclose(dsm, per_cell(x, y, z, GRID, np.max), atol=1e-6)


def test_dtm_from_ground_class_and_ndsm(tmp_path: Path) -> None:
    x, y, z, cls = random_cloud()
    path = write_las(tmp_path / "c.laz", x, y, z, cls, "1.4", 6)
    dsm = rasterize_cloud(path, GRID, "dsm")
    dtm = rasterize_cloud(path, GRID, "dtm")
    ndsm = rasterize_cloud(path, GRID, "ndsm")
    g = cls == 2
    ref = per_cell(x[g], y[g], z[g], GRID, np.min)
    has = np.isfinite(ref)
    assert has.mean() > 0.9
    np.testing.assert_allclose(dtm[has], ref[has], atol=1e-6)
    assert np.isfinite(dtm).all()  # cells without ground are interpolated
    np.testing.assert_allclose(ndsm, np.maximum(dsm - dtm, 0), atol=1e-6)


def test_dtm_without_ground_class_is_a_morphological_minimum(tmp_path: Path) -> None:
    # flat ground at z=100 with a 4 m x 3 m, 5 m high box: the opening removes the box
    xs, ys = np.meshgrid(np.arange(0.25, 20, 0.5), np.arange(0.25, 16, 0.5))
    x, y = X0 + xs.ravel(), Y0 + ys.ravel()
    on_box = (xs.ravel() > 8) & (xs.ravel() < 12) & (ys.ravel() > 6) & (ys.ravel() < 9)
    z = np.where(on_box, 105.0, 100.0)
    path = write_las(tmp_path / "noground.las", x, y, z)  # all class 1
    dtm = rasterize_cloud(path, GRID, "dtm", ground_window=8.0)
    ndsm = rasterize_cloud(path, GRID, "ndsm", ground_window=8.0)
    np.testing.assert_allclose(dtm, 100.0)
    box_cells = per_cell(x, y, z, GRID, np.max) > 101
    assert box_cells.sum() == 4 * 3
    np.testing.assert_allclose(ndsm[box_cells], 5.0)
    np.testing.assert_allclose(ndsm[~box_cells], 0.0)


def test_chunked_equals_single_chunk(tmp_path: Path) -> None:
    x, y, z, cls = random_cloud(3000, seed=5)
    path = write_las(tmp_path / "c.laz", x, y, z, cls, "1.4", 6)
    for kind in ("dsm", "dtm", "ndsm"):
        one = rasterize_cloud(path, GRID, kind, chunk_size=10_000_000)
        many = rasterize_cloud(path, GRID, kind, chunk_size=7)
        np.testing.assert_array_equal(one, many)


def test_nan_where_no_points_and_small_holes_filled(tmp_path: Path) -> None:
    xs, ys = np.meshgrid(np.arange(0.5, 10), np.arange(0.5, 10))  # one point per cell, 10x10
    keep = ~((xs == 4.5) & (ys == 4.5))  # one empty cell inside
    x, y = X0 + xs[keep], Y0 + 6 + ys[keep]
    z = np.full(x.shape, 3.0)
    z[(xs[keep] == 5.5) & (ys[keep] == 4.5)] = 9.0  # a high neighbour
    path = write_las(tmp_path / "holes.las", x, y, z)
    raw = rasterize_cloud(path, GRID, "dsm", fill_holes=0)
    filled = rasterize_cloud(path, GRID, "dsm", fill_holes=2)
    hole = (16 - 6 - 5, 4)  # row, col of the empty cell
    assert np.isnan(raw[hole]) and filled[hole] == 9.0
    assert np.isnan(filled[:, 10:]).all() and np.isnan(filled[10:]).all()  # outside stays NaN


def test_reprojected_cloud_lands_in_the_right_cells(tmp_path: Path) -> None:
    # cloud in UTM 33N, grid in UTM 34N over the same place (near the zone edge)
    lon, lat = 18.0, 45.0
    to33 = Transformer.from_crs(4326, 32633, always_xy=True)
    to34 = Transformer.from_crs(4326, 32634, always_xy=True)
    ex, ey = to34.transform(lon, lat)
    grid = Grid(CRS.from_epsg(32634), Affine(2.0, 0, ex - 49.3, 0, -2.0, ey + 49.3), 50, 50)
    lons = lon + np.array([0.0, 0.0003, -0.0002])
    lats = lat + np.array([0.0, 0.0001, -0.0003])
    x, y = to33.transform(lons, lats)
    path = write_las(tmp_path / "c33.las", np.asarray(x), np.asarray(y), np.array([7.0, 8.0, 9.0]))
    dsm = rasterize_cloud(path, grid, "dsm", fill_holes=0)
    gx, gy = to34.transform(lons, lats)
    cols, rows = (~grid.transform) @ (np.asarray(gx), np.asarray(gy))
    for r, c, v in zip(rows.astype(int), cols.astype(int), (7.0, 8.0, 9.0), strict=True):
        assert dsm[r, c] == pytest.approx(v)
    assert np.isfinite(dsm).sum() == 3


def test_cloud_grid_covers_every_point(tmp_path: Path) -> None:
    x, y, z, cls = random_cloud(500)
    info = open_cloud(write_las(tmp_path / "c.las", x, y, z, cls))
    grid = cloud_grid(info, 0.75)
    cols, rows = (~grid.transform) @ (x, y)
    assert (cols >= 0).all() and (cols < grid.width).all()
    assert (rows >= 0).all() and (rows < grid.height).all()
    assert grid.crs == UTM33 and grid.res == (0.75, 0.75)


def test_epsg_zero_and_no_crs_count_as_missing(tmp_path: Path) -> None:
    x, y, z, _ = random_cloud(50)
    header = laspy.LasHeader(point_format=1, version="1.2")
    header.add_crs(PCRS.from_epsg(32633))
    for vlr in header.vlrs:
        if isinstance(vlr, GeoKeyDirectoryVlr):
            for key in vlr.geo_keys:
                if key.id == 3072:  # ProjectedCSTypeGeoKey
                    key.value_offset = 0
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, z
    las.write(tmp_path / "epsg0.las")
    assert open_cloud(tmp_path / "epsg0.las").crs is None
    nocrs = write_las(tmp_path / "nocrs.las", x, y, z, epsg=None)
    assert open_cloud(nocrs).crs is None
    with pytest.raises(CRSError):
        rasterize_cloud(tmp_path / "epsg0.las", GRID, "dsm")
    # a CRS-less cloud on its own CRS-less grid is fine
    dsm = rasterize_cloud(nocrs, cloud_grid(open_cloud(nocrs), 1.0))
    assert np.isfinite(dsm).any()


def _bad_clouds(tmp_path: Path) -> dict[str, Path]:
    x, y, z, cls = random_cloud(200_000, seed=9)
    laz = write_las(tmp_path / "big.laz", x, y, z, cls, "1.4", 6).read_bytes()
    las = write_las(tmp_path / "big.las", x, y, z, cls).read_bytes()
    lying = bytearray(las)
    lying[107:111] = (300_000).to_bytes(4, "little")  # legacy point count (LAS 1.2)
    many_vlrs = bytearray(las)
    many_vlrs[100:104] = (2**32 - 1).to_bytes(4, "little")  # laspy would loop ~forever
    many_evlrs = bytearray(laz)
    many_evlrs[243:247] = (2**32 - 1).to_bytes(4, "little")
    files = {
        "truncated_laz": laz[: len(laz) // 2],
        "laz_header_only": laz[:400],
        "truncated_las": las[: len(las) - 1000],
        "lying_count": bytes(lying),
        "lying_vlr_count": bytes(many_vlrs),
        "lying_evlr_count": bytes(many_evlrs),
        "empty": b"",
        "foreign": b"II*\x00" + bytes(2000),
        "garbage_after_signature": b"LASF" + bytes(range(256)) * 4,
    }
    out = {}
    for name, content in files.items():
        out[name] = tmp_path / f"{name}.laz"
        out[name].write_bytes(content)
    out["missing"] = tmp_path / "missing.laz"
    no_points = laspy.LasData(laspy.LasHeader(point_format=6, version="1.4"))
    no_points.write(tmp_path / "nopoints.las")
    out["no_points"] = tmp_path / "nopoints.las"
    return out


BAD = ["truncated_laz", "laz_header_only", "truncated_las", "lying_count", "lying_vlr_count",
       "lying_evlr_count", "empty", "foreign", "garbage_after_signature", "missing",
       "no_points"]  # fmt: skip


@pytest.fixture(scope="module")
def bad_clouds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _bad_clouds(tmp_path_factory.mktemp("bad"))


@pytest.mark.timeout(60)  # a lying header must not hang
@pytest.mark.parametrize("name", BAD)
def test_bad_clouds_raise_point_cloud_error(bad_clouds: dict[str, Path], name: str) -> None:
    path = bad_clouds[name]
    with pytest.raises(PointCloudError) as err:
        open_cloud(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    with pytest.raises(PointCloudError):
        rasterize_cloud(path, GRID, "ndsm")


def test_read_points_thins_and_scales_colour(tmp_path: Path) -> None:
    x, y, z, cls = random_cloud(1000)
    path = write_las(tmp_path / "rgb.laz", x, y, z, cls, "1.2", 3)
    pts = read_points(path, max_points=300, chunk_size=64)
    k = 4  # ceil(1000 / 300)
    assert pts["xyz"].shape == (250, 3)
    np.testing.assert_allclose(pts["xyz"][:, 0], x[::k], atol=1e-3)
    np.testing.assert_array_equal(pts["classification"], cls[::k])
    assert pts["rgb"].dtype == np.uint8 and (pts["rgb"] == 255).all()
    assert "rgb" not in read_points(write_las(tmp_path / "plain.las", x, y, z, cls))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupted_laz_bytes_raise_point_cloud_error(tmp_path: Path, seed: int) -> None:
    x, y, z, cls = random_cloud(100_000, seed=seed)
    raw = bytearray(write_las(tmp_path / "c.laz", x, y, z, cls, "1.4", 6).read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(2000, len(raw) - 2000, 20):
        raw[pos] = int(rng.integers(0, 256))
    (tmp_path / "c.laz").write_bytes(bytes(raw))
    with pytest.raises(PointCloudError, match="c.laz"):
        rasterize_cloud(tmp_path / "c.laz", GRID, "dsm")


class PanicException(BaseException):
    """Stands in for pyo3's PanicException, which lazrs raises on a Rust panic."""


def test_rust_panic_is_caught_at_the_boundary(tmp_path: Path, monkeypatch) -> None:
    x, y, z, cls = random_cloud(100)
    path = write_las(tmp_path / "c.laz", x, y, z, cls, "1.4", 6)

    def panic(*args, **kwargs):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(laspy.LasReader, "chunk_iterator", panic)
    with pytest.raises(PointCloudError, match="unwrap"):
        rasterize_cloud(path, GRID, "dsm")
    monkeypatch.setattr(laspy.LasReader, "chunk_iterator", lambda *a, **k: iter(()))
    with pytest.raises(PointCloudError, match="truncated"):
        rasterize_cloud(path, GRID, "dsm")
