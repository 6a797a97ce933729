"""export / ONNX Runtime / fast torch path: parity with torch, int8, missing extra, bf16."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import torch

from geodetect.cli import main
from geodetect.device import cpu_bf16_reason
from geodetect.inference import infer
from geodetect.model import build_model, fuse_conv_bn, model_blob

torch.set_num_threads(2)
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

ARCH = {
    "name": "geonet",
    "in_channels": 3,
    "n_classes": 2,
    "width": 8,
    "backbone": "none",
    "pretrained": None,
    "stride": 4,
    "multiple": 32,
}


def _random_net(seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, heatmap bias raised so that it finds plenty."""
    torch.manual_seed(seed)
    net = build_model(ARCH)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with torch.no_grad():
        net.heatmap.bias.fill_(0.5)
        net.regress.weight.normal_(0, 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    meta = {
        "classes": ["vehicle", "building"],
        "has_front": [True, False],
        "bands": [1, 2, 3],
        "elevation": False,
        "gsd": 0.25,
        "arch": ARCH,
        "normalisation": {"stats": "scene"},
        "config": {"infer": {"tile": 256, "overlap": 64, "threshold": 0.6}},
    }
    path = tmp_path_factory.mktemp("export") / "model.pt"
    torch.save(model_blob(_random_net(), meta), path)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from geodetect.data import make_sample_data

    root = tmp_path_factory.mktemp("export_scene")
    return make_sample_data(root, size=320, seed=5, cloud=False, name="s").image


def test_conv_bn_fusion_keeps_outputs():
    net = _random_net(1)
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        want = net(x)
        got = fuse_conv_bn(_random_net(1))(x)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fuse_conv_bn(_random_net(1)).modules())
    assert n_bn == 0
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-4), k


def test_export_metadata_and_onnxruntime_parity(model_pt, scene, tmp_path):
    out = tmp_path / "model.onnx"
    assert main(["export", str(model_pt), "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["geodetect"])
    assert meta["classes"] == ["vehicle", "building"] and meta["gsd"] == 0.25
    assert meta["config"]["infer"]["tile"] == 256 and meta["bands"] == [1, 2, 3]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]

    a = gpd.read_file(infer(model_pt, [scene], out=tmp_path / "pt.gpkg", device="cpu"))
    b = gpd.read_file(infer(out, [scene], out=tmp_path / "onnx.gpkg", device="cpu"))
    assert len(a) > 20  # the random net finds plenty, so parity means something
    a, b = _paired(a, b)
    assert list(a["class"]) == list(b["class"])
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-3)
    np.testing.assert_allclose(a["angle_deg"], b["angle_deg"], atol=0.1)


def _paired(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> tuple:
    """The two detection sets in matching order: each detection of `a` with the one of `b`
    at the same centre (within 0.01 m, 1/25 px). Files are sorted by score, so two objects
    whose scores tie within float noise may be written in either order by the two runtimes;
    the pairing must still be one to one and complete."""
    from scipy.spatial import cKDTree

    assert len(a) == len(b)
    assert sorted(a["class"]) == sorted(b["class"])
    rows_a, rows_b = [], []
    for cls in sorted(set(a["class"])):
        ia, ib = np.flatnonzero(a["class"] == cls), np.flatnonzero(b["class"] == cls)
        ca = np.c_[a.geometry.centroid.x.iloc[ia], a.geometry.centroid.y.iloc[ia]]
        cb = np.c_[b.geometry.centroid.x.iloc[ib], b.geometry.centroid.y.iloc[ib]]
        dist, idx = cKDTree(cb).query(ca)
        assert dist.max() < 0.01, f"{cls}: a detection moved by {dist.max():.3f} m"
        assert len(set(idx.tolist())) == len(ib), f"{cls}: two detections paired with one"
        rows_a += ia.tolist()
        rows_b += ib[idx].tolist()
    return a.iloc[rows_a].reset_index(drop=True), b.iloc[rows_b].reset_index(drop=True)


def test_int8_export_runs_and_detects(model_pt, scene, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    argv = ["export", str(model_pt), "--out", str(out), "--int8"]
    assert main(argv) == 2  # calibration scenes are required
    assert "--calibrate" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--calibrate", str(scene)]) == 0
    proto = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["geodetect"])
    assert meta["precision"] == "int8"
    got = gpd.read_file(infer(out, [scene], out=tmp_path / "int8.gpkg", device="cpu"))
    assert len(got) > 0


def test_missing_onnxruntime_is_a_one_line_error(model_pt, scene, tmp_path, capsys, monkeypatch):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"not read: the import fails first")
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    out = tmp_path / "det.gpkg"
    assert main(["infer", str(onnx_path), str(scene), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: ONNX models need onnxruntime: pip install 'geodetect[onnx]'"
    assert not out.exists()
    assert main(["export", str(model_pt), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "geodetect[onnx]" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_without_geodetect_metadata_is_refused(model_pt, scene, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(model_pt), "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    onnx.save(proto, str(out))
    assert main(["infer", str(out), str(scene), "--out", str(tmp_path / "d.gpkg")]) == 2
    assert "without geodetect metadata" in capsys.readouterr().err


@pytest.mark.skipif(cpu_bf16_reason() is not None, reason=str(cpu_bf16_reason()))
def test_bf16_path_matches_fp32(model_pt, scene, tmp_path):
    """bf16 keeps 8 bits of mantissa: every head moves by well under a tenth of its spread,
    and the run end to end scores like fp32. (Counts and places are not compared: the random
    net's heatmap is flat, hundreds of cells tie on the threshold, so 1e-3 moves them.)"""
    from geodetect.torchrun import load_torch

    x = np.random.default_rng(0).normal(size=(2, 3, 256, 256)).astype(np.float32)
    fp32, _ = load_torch(model_pt, torch.device("cpu"), "fp32")
    bf16, _ = load_torch(model_pt, torch.device("cpu"), "bf16")
    want, got = fp32(x), bf16(x)
    for k in want:
        w, g = np.asarray(want[k], np.float64), np.asarray(got[k], np.float64)
        assert np.abs(w - g).max() < 0.1 * w.std() + 1e-3, k

    a = gpd.read_file(infer(model_pt, [scene], out=tmp_path / "a.gpkg", device="cpu"))
    b = gpd.read_file(
        infer(model_pt, [scene], out=tmp_path / "b.gpkg", device="cpu", precision="bf16")
    )
    assert len(b) > 0
    np.testing.assert_allclose(np.sort(a["score"])[-10:], np.sort(b["score"])[-10:], atol=0.03)


_ONNX_ONLY = """
import json, sys
from geodetect.cli import main
from geodetect.detection import detect
n = len(detect(sys.argv[1], sys.argv[2], device="cpu"))
assert main(["infer", sys.argv[1], sys.argv[2], "--device", "cpu", "--out", sys.argv[3]]) == 0
print(json.dumps({"n": n, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
"""


def test_onnx_path_never_imports_torch(model_pt, scene, tmp_path):
    """`detect` and `geodetect infer` on an .onnx skip torch's seconds of import."""
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(model_pt), "--out", str(onnx_path)]) == 0
    argv = [sys.executable, "-c", _ONNX_ONLY, str(onnx_path), str(scene), str(tmp_path / "d.gpkg")]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["torch"] == [] and got["n"] > 20


def test_an_ensemble_exports_as_one_graph_with_parity(model_pt, scene, tmp_path):
    """A two-member model exports as one ONNX graph (outputs member-major along the batch)
    and ONNX Runtime fuses its members as torch does."""
    from geodetect.training import ensemble_blob

    blob = torch.load(model_pt, weights_only=True)
    other = model_blob(_random_net(3), {k: v for k, v in blob.items() if k != "state_dict"})
    members = [{**b, "size_scale": [1.0, 1.2], "metrics": {"val_ap50": {}}} for b in (blob, other)]
    pt = tmp_path / "ens.pt"
    torch.save(ensemble_blob(members, blob["config"]), pt)
    onnx_path = tmp_path / "ens.onnx"
    assert main(["export", str(pt), "--out", str(onnx_path)]) == 0
    a = gpd.read_file(infer(pt, [scene], out=tmp_path / "pt.gpkg", device="cpu"))
    b = gpd.read_file(infer(onnx_path, [scene], out=tmp_path / "onnx.gpkg", device="cpu"))
    assert len(a) > 20
    a, b = _paired(a, b)
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-3)
    np.testing.assert_allclose(a["length_m"], b["length_m"], rtol=1e-3)
