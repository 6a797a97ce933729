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


def _twins(model_pt: Path, path: Path, scales: list[list[float]]) -> Path:
    """The model file's network twice, as a two-member ensemble with these member scales."""
    from geodetect.training import ensemble_blob

    blob = torch.load(model_pt, weights_only=True)
    blobs = [{**blob, "size_scale": s, "metrics": {"val_ap50": {}}} for s in scales]
    torch.save(ensemble_blob(blobs, blob["config"]), path)
    return path


def test_an_ensemble_of_one_network_twice_detects_what_it_does(model_pt, scenes, tmp_path):
    """Two identical members, with TTA: each box comes twice and the fused box and score are
    the network's own (12 passes fused as its 6). A member read from the wrong batch rows
    breaks it."""
    twins = _twins(model_pt, tmp_path / "twins.pt", [[1.0, 1.0], [1.0, 1.0]])
    det = load_detector(twins, "cpu")
    assert det.info.members == 2 and det.info.member_size_scale == ((1.0, 1.0), (1.0, 1.0))
    one = detect(model_pt, scenes["utm"], device="cpu", tta=True)
    two = detect(det, scenes["utm"], device="cpu", tta=True)
    assert len(one) > 20
    pd.testing.assert_frame_equal(
        pd.DataFrame(one.drop(columns="geometry")),
        pd.DataFrame(two.drop(columns="geometry")),
        check_dtype=False,
    )


def test_each_member_takes_its_own_size_factor_before_the_fusion():
    """Members that see one 16 x 8 px object, calibrated x1 and x1.21: one box, 1.1 times
    the size (the geometric mean), at the network's score."""
    import numpy as np

    from geodetect.detection import Detector, _forward
    from geodetect.tiling import resolve_settings

    def net(batch: np.ndarray) -> dict:
        n = 2 * batch.shape[0]  # two members, member-major
        heat = np.full((n, 1, 16, 16), -20.0, np.float32)
        heat[:, 0, 8, 8] = 3.0
        reg = np.zeros((n, 8, 16, 16), np.float32)
        reg[:, 2], reg[:, 3], reg[:, 4] = np.log(16.0), np.log(8.0), 1.0
        return {"heatmap": heat, "offset": reg[:, 0:2], "size": reg[:, 2:4],
                "angle": reg[:, 4:6], "heading": reg[:, 6:8]}  # fmt: skip

    meta = {"classes": ["car"], "gsd": 0.25, "arch": {"members": 2}}
    batch = np.zeros((1, 3, 64, 64), np.float32)
    plain = ModelInfo.from_meta({**meta, "member_size_scale": [[1.0], [1.0]]})
    scaled = ModelInfo.from_meta({**meta, "member_size_scale": [[1.0], [1.21]]})
    (a,) = _forward(Detector(net, plain, "cpu", 1), batch, resolve_settings(plain))
    (b,) = _forward(Detector(net, scaled, "cpu", 1), batch, resolve_settings(scaled))
    assert len(a["scores"]) == len(b["scores"]) == 1
    assert b["scores"][0] == pytest.approx(a["scores"][0]) == pytest.approx(1 / (1 + np.exp(-3)))
    assert b["boxes"][0, 2:4] == pytest.approx(1.1 * a["boxes"][0, 2:4])
    assert b["boxes"][0, :2] == pytest.approx(a["boxes"][0, :2])


def test_an_ensemble_without_tta_fuses_its_members(model_pt, scenes, tmp_path):
    """Without TTA the members are the passes: a box only one member finds scores half."""
    from geodetect.training import ensemble_blob

    blob = torch.load(model_pt, weights_only=True)
    quiet = {k: torch.zeros_like(v) if k == "heatmap.weight" else v.clone()
             for k, v in blob["state_dict"].items()}  # fmt: skip
    quiet["heatmap.bias"] = torch.full_like(quiet["heatmap.bias"], -20.0)  # finds nothing
    common = {"size_scale": [1.0, 1.0], "metrics": {"val_ap50": {}}}
    members = [{**blob, **common}, {**blob, **common, "state_dict": quiet}]
    path = tmp_path / "half.pt"
    torch.save(ensemble_blob(members, blob["config"]), path)
    one = detect(model_pt, scenes["utm"], device="cpu", threshold=0.35)
    half = detect(path, scenes["utm"], device="cpu", threshold=0.35)
    assert len(one) > 20
    assert (half["score"] >= 0.35).all() and (half["score"] <= 0.5).all()  # one member of two
    assert len(half) == (one["score"] >= 0.7).sum()
