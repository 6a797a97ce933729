"""Scenes and point clouds where users keep them: URLs and GDAL virtual paths, served from
127.0.0.1 by a child process (tests/_http.py) — no other network."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
from _http import serve

from geodetect.cli import main
from geodetect.config import load_config
from geodetect.errors import GeodetectError
from geodetect.inference import infer
from geodetect.labels import read_vector
from geodetect.pointcloud import open_cloud, rasterize_cloud
from geodetect.raster import open_raster
from geodetect.remote import display_name, gdal_path, is_remote
from geodetect.training import train

TINY = {
    "data.chip_size": 64,
    "model.width": 8,
    "train.epochs": 1,
    "train.chips_per_epoch": 16,
    "train.batch_size": 8,
    "infer.tile": 128,
    "infer.overlap": 32,
}


@pytest.mark.parametrize(
    ("given", "gdal"),
    [
        ("https://h.org/a/b.tif", "/vsicurl/https://h.org/a/b.tif"),
        ("http://127.0.0.1:8000/b.tif", "/vsicurl/http://127.0.0.1:8000/b.tif"),
        ("s3://bucket/key/b.tif", "/vsis3/bucket/key/b.tif"),
        ("gs://bucket/b.tif", "/vsigs/bucket/b.tif"),
        ("az://container/b.tif", "/vsiaz/container/b.tif"),
        ("/vsis3/bucket/b.tif", "/vsis3/bucket/b.tif"),
        ("file:///data/b%20c.tif", "/data/b c.tif"),
        ("scenes/b.tif", "scenes/b.tif"),
    ],
)
def test_gdal_path(given, gdal):
    assert gdal_path(given) == gdal
    assert is_remote(given) == (not given.startswith("scenes"))


def test_display_name_drops_query():
    assert display_name("https://h.org/x/b.tif?X-Amz-Signature=abc") == "b.tif"
    assert display_name("/vsicurl/https://h.org/x/b.tif?sig=1") == "b.tif"
    assert display_name("/vsis3/bucket/k/b.tif") == "b.tif"


def test_unknown_scheme_is_one_line(tmp_path, capsys):
    assert (
        main(["rasterize", "foo://x/a.laz", "--resolution", "1", "--out", str(tmp_path / "a.tif")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "unknown URL scheme" in err
    with pytest.raises(GeodetectError, match="unknown URL scheme"):
        open_raster("foo://x/a.tif")


@pytest.fixture(scope="module")
def served(sample_small, tmp_path_factory):
    """The sample scene and its cloud in a served folder, and the base URL."""
    folder = tmp_path_factory.mktemp("served")
    for path in (sample_small.image, sample_small.cloud):
        shutil.copy(path, folder)
    with serve(folder) as base:
        yield folder, base


@pytest.fixture(scope="module")
def tiny_model(served, sample_small, tmp_path_factory):
    """A barely trained model — trained on the scene read over HTTP, which is what `train`
    with a URL does."""
    folder, base = served
    url = f"{base}/{sample_small.image.name}"
    out = tmp_path_factory.mktemp("tiny_run")
    return train([url], str(sample_small.labels), None, load_config(None, TINY), out, "cpu")


def test_http_scene_gives_the_same_detections(served, sample_small, tiny_model, tmp_path):
    folder, base = served
    local = folder / sample_small.image.name
    frames = []
    for i, image in enumerate([str(local), f"{base}/{local.name}"]):
        out = infer(tiny_model, [image], out=tmp_path / f"d{i}.gpkg", device="cpu", threshold=0.002)
        frames.append(read_vector(out))
    assert len(frames[0]) > 0  # a low threshold: an untrained-ish model still fires
    for other in frames[1:]:
        assert list(other["image"]) == list(frames[0]["image"])
        np.testing.assert_array_equal(other["score"], frames[0]["score"])
        assert other.geometry.geom_equals_exact(frames[0].geometry, 1e-9).all()


def test_vsicurl_reads_the_same_pixels(served, sample_small):
    """GDAL's own form, and a window resampled through a WarpedVRT, read over HTTP."""
    from rasterio.windows import Window

    from geodetect.raster import SceneReader, working_grid

    folder, base = served
    local = folder / sample_small.image.name
    grid = working_grid(open_raster(local), gsd=0.3)  # not the native grid: a warped read
    win = Window(100, 50, 128, 96)
    a = SceneReader(str(local), grid).read(win)
    b = SceneReader(f"/vsicurl/{base}/{local.name}", grid).read(win)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_missing_remote_scene_is_one_line(served, tiny_model, tmp_path, capsys):
    _, base = served
    out = tmp_path / "det.gpkg"
    assert main(["infer", str(tiny_model), f"{base}/missing.tif", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such remote object" in err
    assert not out.exists()


def test_samples_over_http(served, sample_small, tmp_path):
    _, base = served
    url = f"{base}/{sample_small.image.name}?X-Amz-Signature=abc"  # a presigned URL
    argv = ["samples", url, "--labels", str(sample_small.labels)]  # labels name scene.tif
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "samples.csv").read_text().count("\n") > 2


def test_point_cloud_over_http(served, sample_small):
    folder, base = served
    local = folder / sample_small.cloud.name
    remote = open_cloud(f"{base}/{local.name}")
    assert remote.count == open_cloud(local).count and remote.crs == open_cloud(local).crs
    grid = open_raster(sample_small.image).grid
    np.testing.assert_array_equal(
        rasterize_cloud(f"{base}/{local.name}", grid, kind="dsm"),
        rasterize_cloud(local, grid, kind="dsm"),
    )


def test_rasterize_cli_reads_a_cloud_over_http(served, sample_small, tmp_path):
    """The README's example: `geodetect rasterize https://…/cloud.laz --like scene.tif`."""
    folder, base = served
    name = sample_small.cloud.name
    argv = ["rasterize", f"{base}/{name}", "--like", str(sample_small.image), "--out"]
    assert main([*argv, str(tmp_path / "remote.tif")]) == 0
    local = ["rasterize", str(folder / name), "--like", str(sample_small.image), "--out"]
    assert main([*local, str(tmp_path / "local.tif")]) == 0
    with rasterio.open(tmp_path / "remote.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_missing_or_unsupported_remote_cloud(served, tmp_path, capsys):
    _, base = served
    argv = ["rasterize", f"{base}/missing.laz", "--resolution", "1", "--out"]
    assert main([*argv, str(tmp_path / "a.tif")]) == 2
    assert "no such remote object (HTTP 404)" in capsys.readouterr().err
    assert (
        main(["rasterize", "s3://b/c.laz", "--resolution", "1", "--out", str(tmp_path / "b.tif")])
        == 2
    )
    assert "http(s):// URLs or local files only" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_napari_routes_urls_with_a_query_to_the_reader():
    """npe2 matches reader patterns against the whole string: a presigned URL's `?query`
    must still reach geodetect's reader (the manifest's `*.tif[?]*` patterns)."""
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()

    def readers(path: str) -> list[str]:
        return [r.command for r in pm.iter_compatible_readers([path])]

    for url in ("https://h/a.tif?X-Amz-Signature=1", "https://h/c.laz?sig=2", "/vsicurl/h/a.tif"):
        assert "geodetect.get_reader" in readers(url), url
    assert "geodetect.get_reader" not in readers("https://h/a.png?x=1")


def test_plugin_reader_opens_a_url(served, sample_small):
    from geodetect.plugin._reader import get_reader

    _, base = served
    url = f"{base}/{sample_small.image.name}?token=1"
    reader = get_reader(url)
    assert reader is not None
    ((data, kwargs, kind),) = reader(url)
    assert kind == "image" and kwargs["name"] == sample_small.image.stem
    assert kwargs["metadata"]["geodetect"]["path"] == url
    assert np.asarray(data).shape[:2] == (512, 512)
