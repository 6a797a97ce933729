"""`geodetect rasterize` end to end through cli.main: exact grids, nodata, clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from test_pointcloud import X0, Y0, random_cloud, write_las

from geodetect.cli import main
from geodetect.geotiff import write_raster
from geodetect.pointcloud import NODATA, rasterize_cloud
from geodetect.raster import Grid

UTM33 = CRS.from_epsg(32633)


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Grid]:
    # a 0.7 m grid that does not start on the cloud's bounds and extends past it
    grid = Grid(UTM33, Affine(0.7, 0, X0 - 3.1, 0, -0.7, Y0 + 18.3), 37, 31)
    return write_raster(tmp_path / "scene.tif", np.ones((3, 31, 37), np.uint8), grid), grid


@pytest.fixture
def cloud(tmp_path: Path) -> Path:
    x, y, z, cls = random_cloud(3000)
    return write_las(tmp_path / "cloud.laz", x, y, z, cls, "1.4", 6)


@pytest.mark.parametrize("kind", ["dsm", "dtm", "ndsm"])
def test_rasterize_like_has_the_exact_grid(
    tmp_path: Path, scene: tuple[Path, Grid], cloud: Path, kind: str, capsys
) -> None:
    image, grid = scene
    out = tmp_path / f"{kind}.tif"
    assert (
        main(["rasterize", str(cloud), "--like", str(image), "--out", str(out), "--kind", kind])
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    with rasterio.open(out) as ds:
        assert ds.crs == UTM33 and ds.transform == grid.transform
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (37, 31, 1, "float32")
        assert ds.nodata == NODATA
        dem = ds.read(1)
    expected = rasterize_cloud(cloud, grid, kind)
    np.testing.assert_array_equal(dem == NODATA, np.isnan(expected))
    np.testing.assert_allclose(dem[dem != NODATA], expected[np.isfinite(expected)])
    assert (dem == NODATA).any() and (dem != NODATA).any()  # scene extends past the cloud


def test_rasterize_resolution(tmp_path: Path, cloud: Path) -> None:
    out = tmp_path / "dsm.tif"
    assert main(["rasterize", str(cloud), "--resolution", "2", "--out", str(out)]) == 0
    with rasterio.open(out) as ds:
        assert ds.crs == UTM33 and ds.res == (2.0, 2.0)
        assert (ds.width, ds.height) == (10, 8)  # points span [0, 20) x [0, 16) m
        assert ds.read(1).max() > 9.0


def _cases(tmp_path: Path, scene: Path, cloud: Path) -> dict[str, list[str]]:
    truncated = tmp_path / "cut.laz"
    truncated.write_bytes(cloud.read_bytes()[: cloud.stat().st_size // 2])
    x, y, z, cls = random_cloud(100)
    nocrs = write_las(tmp_path / "nocrs.las", x, y, z, cls, epsg=None)
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    out = str(tmp_path / "out.tif")
    return {
        "truncated cloud": [str(truncated), "--like", str(scene), "--out", out],
        "missing cloud": [str(tmp_path / "nope.laz"), "--resolution", "1", "--out", out],
        "cloud without CRS": [str(nocrs), "--like", str(scene), "--out", out],
        "corrupt like": [str(cloud), "--like", str(bad_tif), "--out", out],
        "bad resolution": [str(cloud), "--resolution", "-1", "--out", out],
        "missing out folder": [str(cloud), "--resolution", "1", "--out", str(tmp_path / "x/o.tif")],
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated cloud",
        "missing cloud",
        "cloud without CRS",
        "corrupt like",
        "bad resolution",
        "missing out folder",
    ],  # fmt: skip
)
def test_bad_input_exits_2_with_one_error_line_and_no_file(
    tmp_path: Path, scene: tuple[Path, Grid], cloud: Path, case: str, capsys
) -> None:
    before = set(tmp_path.rglob("*"))
    args = _cases(tmp_path, scene[0], cloud)[case]
    created = set(tmp_path.rglob("*")) - before
    assert main(["rasterize", *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert set(tmp_path.rglob("*")) - before == created  # nothing written, no temp files
    assert not (tmp_path / "out.tif").exists()


def test_lying_header_bounds_still_give_the_points_dem(tmp_path: Path, cloud: Path) -> None:
    """Header bounds 100 km off (a writer that never updated them): the grid follows the
    points, as PDAL's does, and the DEM is the one of the honest file."""
    from test_bad_inputs import lying_header

    honest, liar = tmp_path / "honest.tif", tmp_path / "liar.tif"
    assert main(["rasterize", str(cloud), "--resolution", "2", "--out", str(honest)]) == 0
    lying = tmp_path / "lying.laz"
    lying.write_bytes(cloud.read_bytes())
    lying_header(lying)
    assert main(["rasterize", str(lying), "--resolution", "2", "--out", str(liar)]) == 0
    with rasterio.open(honest) as a, rasterio.open(liar) as b:
        assert a.transform == b.transform and a.shape == b.shape
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert (b.read(1) != NODATA).any()


def test_cloud_off_the_scene_is_an_error_not_an_empty_dem(tmp_path: Path, cloud: Path) -> None:
    far = Grid(UTM33, Affine(0.7, 0, X0 + 5000, 0, -0.7, Y0 + 5000), 20, 20)
    scene = write_raster(tmp_path / "far.tif", np.ones((3, 20, 20), np.uint8), far)
    out = tmp_path / "dem.tif"
    assert main(["rasterize", str(cloud), "--like", str(scene), "--out", str(out)]) == 2
    assert not out.exists()
