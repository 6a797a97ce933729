"""STAC items as scenes (`infer --stac`, `--from-list` of items): asset href and CRS."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import rasterio
from _http import serve
from affine import Affine

from geodetect.cli import main
from geodetect.errors import CRSError, InputError
from geodetect.raster import open_raster
from geodetect.stac import resolve_item, resolve_scenes

pytest.importorskip("pystac")
TRANSFORM = Affine(0.5, 0, 500_000.0, 0, -0.5, 5_000_000.0)


def _tif(path, crs="EPSG:32633"):
    kw = {"crs": crs, "transform": TRANSFORM} if crs else {}
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=48, count=3, dtype="uint8", **kw
    ) as ds:
        ds.write(np.full((3, 48, 64), 100, np.uint8))
    return path


def _item(folder, name="item.json", href="scene.tif", asset="visual", **proj):
    doc = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "id": name.split(".")[0],
        "geometry": {"type": "Point", "coordinates": [15.0, 45.0]},
        "bbox": [15.0, 45.0, 15.0, 45.0],
        "properties": {"datetime": "2026-01-01T00:00:00Z", **proj},
        "links": [],
        "assets": {
            asset: {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]},
            "thumbnail": {"href": "thumb.png", "type": "image/png"},
        },
    }
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def test_asset_href_relative_to_the_item(tmp_path):
    _tif(tmp_path / "scene.tif")
    item = _item(tmp_path, **{"proj:code": "EPSG:32633"})
    assert resolve_item(str(item)) == str(tmp_path / "scene.tif")


def test_crs_from_the_item_for_a_file_without_one(tmp_path):
    _tif(tmp_path / "scene.tif", crs=None)
    proj = {"proj:epsg": 32633, "proj:transform": list(TRANSFORM)[:6]}
    path = resolve_item(str(_item(tmp_path, **proj)))
    info = open_raster(path)
    assert info.grid.crs.to_epsg() == 32633
    assert info.grid.transform.almost_equals(TRANSFORM)


def test_item_crs_disagreeing_with_the_file_is_an_error(tmp_path):
    _tif(tmp_path / "scene.tif")
    with pytest.raises(CRSError, match="says EPSG:32632"):
        resolve_item(str(_item(tmp_path, **{"proj:code": "EPSG:32632"})))


def test_asset_choice(tmp_path):
    _tif(tmp_path / "b.tif")
    item = _item(tmp_path, href="b.tif", asset="rgb")
    assert resolve_item(str(item)).endswith("b.tif")  # the only image asset
    assert resolve_item(str(item), "rgb").endswith("b.tif")
    with pytest.raises(InputError, match="no asset 'visual'; it has rgb, thumbnail"):
        resolve_item(str(item), "visual")


def test_item_over_http(tmp_path):
    _tif(tmp_path / "scene.tif")
    _item(tmp_path, **{"proj:code": "EPSG:32633"})
    with serve(tmp_path) as base:
        path = resolve_item(f"{base}/item.json")
        assert path == f"{base}/scene.tif"
        assert open_raster(path).grid.width == 64
        with pytest.raises(InputError, match="no such STAC item|not a readable STAC item"):
            resolve_item(f"{base}/missing.json")


def test_cli_hands_infer_the_assets(tmp_path, monkeypatch, capsys):
    """--stac and STAC items in --from-list reach infer as scene paths (the only hook)."""
    for k in range(3):
        _tif(tmp_path / f"s{k}.tif")
        _item(tmp_path, f"item{k}.json", f"s{k}.tif", **{"proj:code": "EPSG:32633"})
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'item1.json'}\n{tmp_path / 's2.tif'}\n")
    seen = {}

    def fake_infer(**kw):
        seen.update(kw)
        return tmp_path / "det.gpkg"

    monkeypatch.setattr(importlib.import_module("geodetect.inference"), "infer", fake_infer)
    argv = ["infer", "m.pt", "--stac", str(tmp_path / "item0.json"), "--asset", "visual"]
    assert main([*argv, "--from-list", str(tmp_path / "list.txt")]) == 0
    assert seen["images"] == [str(tmp_path / f"s{k}.tif") for k in (1, 2, 0)]
    capsys.readouterr()
    assert main(["infer", "m.pt", "--stac", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such STAC item" in err


def test_resolve_scenes_passes_plain_paths():
    assert resolve_scenes(["a.tif", "/vsis3/b/c.tif", "a.tif"]) == ["a.tif", "/vsis3/b/c.tif"]
