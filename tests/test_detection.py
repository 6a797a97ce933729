"""detection: `detect()` on one scene is `infer()` to a file for it — one path, not two.

An untrained network with its heatmap bias raised finds plenty of (meaningless) boxes in a
second, which is all these tests need: the same boxes must come out of both entry points,
in the scene's CRS, also for a geographic scene processed in its UTM zone.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import rasterio
import torch

from geodetect.detection import detect, load_detector
from geodetect.inference import infer
from geodetect.labels import read_vector
from geodetect.model import build_model, make_arch, model_blob
from geodetect.modelinfo import ModelInfo

PACKAGE = Path(__file__).resolve().parents[1] / "geodetect"


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    """A random two-class network that fires everywhere (threshold 0.6 keeps dozens)."""
    from geodetect.config import Config, dump_config

    cfg = Config.model_validate({"model": {"width": 8}, "infer": {"tile": 256, "overlap": 64}})
    arch = make_arch(3, 2, cfg.model)
    torch.manual_seed(0)
    net = build_model(arch).eval()
    with torch.no_grad():
        net.heatmap.bias.fill_(0.5)
        net.regress.weight.normal_(0, 0.05)
    meta = {
        "classes": ["vehicle", "building"],
        "has_front": [True, False],
        "orientation_free": [False, False],
        "bands": [1, 2, 3],
        "elevation": False,
        "gsd": 0.25,
        "normalisation": {"stats": "scene"},
        "config": {**dump_config(cfg), "infer": {**dump_config(cfg)["infer"], "threshold": 0.6}},
        "arch": arch,
        "metrics": {},
    }
    path = tmp_path_factory.mktemp("detect_model") / "model.pt"
    torch.save(model_blob(net, meta), path)
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """A 320² UTM scene and the same pixels warped to EPSG:4326."""
    from rasterio.warp import calculate_default_transform, reproject

    from geodetect.data import make_sample_data

    root = tmp_path_factory.mktemp("detect_scenes")
    utm = make_sample_data(root, size=320, seed=5, cloud=False, name="s").image
    geo = root / "geo.tif"
    with rasterio.open(utm) as src:
        transform, w, h = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        profile = {**src.profile, "crs": "EPSG:4326", "transform": transform}
        with rasterio.open(geo, "w", **{**profile, "width": w, "height": h, "nodata": 0}) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b))
    return {"utm": Path(utm), "wgs84": geo}


def _left_half(scene: Path) -> dict:
    left, bottom, right, top = rasterio.open(scene).bounds
    return {"bounds": (left, bottom, (left + right) / 2, top), "crs": rasterio.open(scene).crs}


@pytest.mark.parametrize(
    ("kind", "region", "loaded"),
    [("utm", False, False), ("wgs84", False, True), ("utm", True, True)],
)
def test_detect_equals_infer_to_a_file(model_pt, scenes, kind, region, loaded, tmp_path):
    scene = scenes[kind]
    area = _left_half(scene) if region else None
    model = load_detector(model_pt, "cpu") if loaded else model_pt
    got = detect(model, scene, region=area, device="cpu")
    want = read_vector(infer(model_pt, [scene], out=tmp_path / "d.gpkg", device="cpu", aoi=area))
    assert len(got) > 20  # the random net finds plenty, so equality means something
    assert got.crs == want.crs == rasterio.open(scene).crs  # the scene's own CRS
    pd.testing.assert_frame_equal(
        pd.DataFrame(got.drop(columns="geometry")),
        pd.DataFrame(want.drop(columns=want.geometry.name)),
        check_dtype=False,
    )
    assert got.geometry.geom_equals_exact(want.geometry, tolerance=1e-9).all()
    if region:  # centres inside the area only, and fewer than over the whole scene
        assert (got.geometry.centroid.x < area["bounds"][2]).all()
        assert len(got) < len(detect(model, scene, device="cpu"))


def test_detect_takes_the_model_settings_and_overrides(model_pt, scenes):
    det = load_detector(model_pt, "cpu")
    assert isinstance(det.info, ModelInfo) and det.info.classes == ("vehicle", "building")
    strict = detect(det, scenes["utm"], threshold=0.9)
    assert len(strict) < len(detect(det, scenes["utm"]))
    assert (strict["score"] >= 0.9).all()


def test_size_scale_of_the_model_file_scales_each_class_sizes(model_pt, scenes, tmp_path):
    """Training stores a per-class size calibration; detection applies it to lengths and
    widths (vehicles x 1.5 here, buildings unchanged), nothing else moves."""
    blob = torch.load(model_pt, weights_only=True)
    blob["size_scale"] = [1.5, 1.0]
    scaled = tmp_path / "scaled.pt"
    torch.save(blob, scaled)
    base = detect(model_pt, scenes["utm"], device="cpu", nms_iou=1.0)
    got = detect(scaled, scenes["utm"], device="cpu", nms_iou=1.0)
    assert len(got) == len(base) > 0
    factor = got["length_m"].to_numpy() / base["length_m"].to_numpy()
    cars = (base["class"] == "vehicle").to_numpy()
    assert factor[cars] == pytest.approx(1.5) and factor[~cars] == pytest.approx(1.0)
    assert got["score"].tolist() == base["score"].tolist()


def test_model_info_is_frozen_and_fills_defaults():
    info = ModelInfo.from_meta({"classes": ["car", "tank"], "gsd": 0.3, "has_front": [True]})
    assert info.has_front == (True, False) and info.orientation_free == (False, False)
    assert info.bands == (1,) and info.multiple == 32 and info.percentiles == (2.0, 98.0)
    assert info.stats_mode == "scene" and info.elevation is False
    assert info.size_scale == (1.0, 1.0)  # files older than the calibration
    with pytest.raises(AttributeError):
        info.gsd = 1.0  # type: ignore[misc]
    from geodetect.errors import ModelError

    with pytest.raises(ModelError, match="m.onnx: model metadata lacks gsd"):
        ModelInfo.from_meta({"classes": ["car"]}, "m.onnx")


def test_settings_default_to_1024_tiles_and_keep_detections_per_area():
    """A model file without saved infer settings tiles at 1024² in batches of 1; the
    detections kept per tile grow with its area (a 1024² tile of a busy car park holds four
    512² tiles' worth) and never fall below 500."""
    from geodetect.tiling import resolve_settings

    info = ModelInfo.from_meta({"classes": ["car"], "gsd": 0.25})
    s = resolve_settings(info)
    assert (s.tile, s.overlap, s.batch_size, s.max_det) == (1024, 128, 1, 2000)
    assert resolve_settings(info, tile=512, batch_size=4).max_det == 500
    assert resolve_settings(info, tile=256, overlap=64).max_det == 500
    assert resolve_settings(info, tile=2048).max_det == 8000


def test_saved_infer_settings_survive_keys_this_version_does_not_know():
    """A model saved by a version with a config key this one lacks (there was a `train.ema`)
    keeps its infer section: validating the whole config once threw it away, and with it the
    model's TTA (Yellowstone AP@0.4 0.54 -> 0.47). Unknown infer keys are dropped one by one;
    a value out of range gives this version's defaults, as before."""
    from geodetect.tiling import resolve_settings

    saved = {"train": {"ema": 0.998}, "infer": {"tta": True, "overlap": 96, "later": 1}}
    info = ModelInfo.from_meta({"classes": ["tree"], "gsd": 0.1, "config": saved})
    s = resolve_settings(info)
    assert s.tta and s.overlap == 96 and s.tile == 1024
    bad = {"infer": {"tta": True, "overlap": -5}}
    info = ModelInfo.from_meta({"classes": ["tree"], "gsd": 0.1, "config": bad})
    assert not resolve_settings(info).tta


# ------------------------------------------------------------------ one downward path


def _imports(path: Path) -> set[str]:
    """geodetect modules a file imports, at module level or inside functions."""
    from test_design import _imports as import_sites

    return {module for module, _, _ in import_sites(path)}


DETECTION_PATH = ("engine", "tiling", "modelinfo", "detection", "inference", "scenes")


def test_no_import_circle_through_detection():
    """infer -> engine -> infer was a circle (the engine called back into inference); no
    module on the detection path is in any circle now."""
    graph = {p.stem: _imports(p) & {q.stem for q in PACKAGE.glob("*.py")} - {p.stem}
             for p in PACKAGE.glob("*.py")}  # fmt: skip

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return False

    circles = [m for m in DETECTION_PATH if reaches(m, m)]
    assert not circles, f"in an import circle: {circles}"
    assert set(DETECTION_PATH) <= graph.keys()
