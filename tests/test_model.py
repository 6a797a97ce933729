"""model: shapes, target encoding <-> decoding, the masked loss, model files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from geodetect.errors import ModelError
from geodetect.geometry import round_boxes
from geodetect.model import (
    build_model,
    decode,
    detection_loss,
    load_model,
    model_blob,
)
from geodetect.targets import MULTIPLE, encode_targets

ARCH = {"in_channels": 4, "n_classes": 2, "width": 8, "backbone": "none", "multiple": MULTIPLE}
META = {"classes": ["a", "b"], "has_front": [True, False], "bands": [1, 2, 3], "elevation": True,
        "gsd": 0.25, "normalisation": {}, "config": {}}  # fmt: skip


def test_network_outputs_at_stride_four():
    net = build_model(ARCH).eval()
    out = net(torch.zeros(2, 4, 128, 96))
    assert out["heatmap"].shape == (2, 2, 32, 24)
    for k in ("offset", "size", "angle", "heading"):
        assert out[k].shape == (2, 2, 32, 24)


def _perfect_outputs(t: dict) -> dict:
    """Network outputs that say exactly what the targets say (logits +-20)."""
    heat = torch.where(torch.as_tensor(t["heatmap"]) == 1, 20.0, -20.0)[None]
    reg = torch.as_tensor(t["reg"])[None]
    return {
        "heatmap": heat,
        "offset": reg[:, 0:2],
        "size": reg[:, 2:4],
        "angle": reg[:, 4:6],
        "heading": reg[:, 6:8],
    }


def test_decode_inverts_encode_for_any_angle():
    boxes = np.array(
        [[30.3, 40.7, 18.0, 7.0, 0.0], [80.0, 20.0, 18.0, 7.0, 123.4], [60.5, 90.1, 60, 40, 179.0]]
    )
    classes = np.array([0, 0, 1])
    heads = np.array([180.0, 123.4, np.nan])
    t = encode_targets(boxes, classes, heads, (128, 128), 2)
    dets = decode(_perfect_outputs(t), 0.5, [True, False])[0]
    order = np.argsort(dets["boxes"][:, 0])
    got = dets["boxes"][order]
    want = boxes[np.argsort(boxes[:, 0])]
    assert np.allclose(got[:, :4], want[:, :4], atol=1e-3)
    diff = np.abs((got[:, 4] - want[:, 4] + 90) % 180 - 90)
    assert diff.max() < 1e-3
    assert dets["classes"][order].tolist() == [0, 1, 0]
    h = dets["headings"][order]
    assert h[0] == pytest.approx(180.0, abs=1e-3) and np.isnan(h[1])
    assert h[2] == pytest.approx(123.4, abs=1e-3)


@pytest.mark.parametrize("theta", [0.0, 30.0, 45.0, 90.0, 137.0])
def test_a_round_object_keeps_an_upright_box_when_the_chip_turns(theta):
    """An axis-aligned crown label turned with its chip becomes the upright box of the turned
    ellipse: a circle's box does not change, a 20 x 10 ellipse's grows to its extents."""
    circle = round_boxes(np.array([[50.0, 60.0, 16.0, 16.0, theta]]))[0]
    assert np.allclose(circle, [50.0, 60.0, 16.0, 16.0, 0.0])
    a = np.radians(theta)
    oval = round_boxes(np.array([[0.0, 0.0, 20.0, 10.0, theta]]))[0]
    ny, ex = oval[2] / 2, oval[3] / 2  # north-south and east-west half extents
    assert ny == pytest.approx(np.hypot(10 * np.cos(a), 5 * np.sin(a)))
    assert ex == pytest.approx(np.hypot(10 * np.sin(a), 5 * np.cos(a)))
    assert oval[4] == 0.0


def test_orientation_free_classes_decode_axis_aligned():
    """Targets of an upright class (round_boxes) decode to axis-aligned boxes of the right
    extents, long side east or north, whatever the angle channels say."""
    wide = round_boxes(np.array([[64.0, 64.0, 40.0, 20.0, 90.0]]))  # 40 east, 20 north
    t = encode_targets(wide, np.array([0]), np.array([np.nan]), (128, 128), 1)
    out = _perfect_outputs(t)
    out["angle"] = out["angle"] + torch.tensor([0.0, 0.3])[None, :, None, None]  # a noisy angle
    box = decode(out, 0.5, [False], upright=[True])[0]["boxes"][0]
    assert np.allclose(box, [64.0, 64.0, 40.0, 20.0, 90.0], atol=1e-3)
    tilted = decode(out, 0.5, [False])[0]["boxes"][0]
    assert abs(tilted[4] - 90.0) > 1.0  # without the flag the noisy angle leaks through


def test_heading_is_the_vote_of_the_core_not_of_one_cell():
    """A dark car's front/back cue is faint: when the peak cell alone points backwards but
    its neighbours point forwards, the decoded heading follows the neighbours."""
    boxes = np.array([[64.0, 64.0, 18.0, 7.0, 30.0]])
    t = encode_targets(boxes, np.array([0]), np.array([30.0]), (128, 128), 1)
    heat = torch.as_tensor(t["heatmap"]).clamp(1e-4, 1 - 1e-4)
    out = _perfect_outputs(t)
    out["heatmap"] = torch.logit(heat)[None]  # the Gaussian bump a trained net gives
    i, j = np.unravel_index(np.argmax(t["heatmap"][0]), t["heatmap"][0].shape)
    out["heading"] = out["heading"].clone()
    out["heading"][0, :, i, j] *= -1.0  # the peak cell votes for the rear
    dets = decode(out, 0.5, [True])[0]
    assert len(dets["scores"]) == 1
    assert dets["headings"][0] == pytest.approx(30.0, abs=1e-3)


def test_unknown_pixels_carry_no_loss():
    """Gradients w.r.t. the heatmap vanish wherever the known mask is 0, whatever the net says."""
    t = encode_targets(
        np.array([[20.0, 20.0, 16, 6, 30]]), np.array([0]), np.array([np.nan]), (64, 64), 1
    )
    known = np.ones((1, 16, 16), np.float32)
    known[:, :, 8:] = 0  # right half unknown
    batch = {k: torch.as_tensor(v)[None] for k, v in t.items()}
    assert (t["reg_weight"][0] > 0).sum() > 1  # box terms are regressed around the centre too
    batch["known"] = torch.as_tensor(known)[None]
    logits = torch.randn(1, 1, 16, 16, requires_grad=True)
    zeros = torch.zeros(1, 2, 16, 16)
    out = {"heatmap": logits, "offset": zeros, "size": zeros, "angle": zeros, "heading": zeros}
    loss, _, _ = detection_loss(out, batch)
    loss.backward()
    g = logits.grad[0, 0]
    assert (g[:, 8:] == 0).all()
    assert (g[:, :8] != 0).any()
    # and a confident false positive in the unknown half costs nothing
    logits2 = logits.detach().clone()
    logits2[0, 0, 3, 12] = 15.0
    loss2, _, _ = detection_loss({**out, "heatmap": logits2}, batch)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def test_model_file_round_trip_and_weights_only(tmp_path):
    net = build_model(ARCH)
    meta = {**META, "arch": ARCH}
    path = tmp_path / "model.pt"
    torch.save(model_blob(net, meta), path)
    loaded, got = load_model(path)
    assert got["classes"] == ["a", "b"] and got["gsd"] == 0.25
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_foreign_and_malicious_files_are_model_errors(tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Evil()))
    torch.save({"state_dict": {}, "hello": 1}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a model")
    torch.save(
        {
            "format": "geodetect-model",
            "version": 1,
            "state_dict": {"x": torch.zeros(1)},
            "classes": ["a"],
            "has_front": [False],
            "bands": [1],
            "elevation": False,
            "gsd": 1.0,
            "arch": ARCH,
        },
        tmp_path / "bad_weights.pt",
    )
    for name, words in [
        ("evil.pt", "not a geodetect model"),
        ("other.pt", "not a geodetect model"),
        ("text.pt", "not a geodetect model"),
        ("bad_weights.pt", "do not fit"),
        ("missing.pt", "not found"),
    ]:
        with pytest.raises(ModelError, match=words):
            load_model(tmp_path / name)


def test_torchvision_backbone_with_local_weights(tmp_path):
    """A ResNet backbone takes local weights (no downloads) and any number of input bands."""
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    arch = {**ARCH, "backbone": "resnet18", "pretrained": str(tmp_path / "r18.pth")}
    net = build_model(arch).eval()
    assert torch.equal(net.backbone.layers[0][0].conv1.weight, ref.layer1[0].conv1.weight)
    # RGB weights kept, the extra (elevation) channel starts from their mean
    w = net.backbone.stem[0].weight
    assert torch.equal(w[:, :3], ref.conv1.weight)
    assert torch.allclose(w[:, 3], ref.conv1.weight.mean(dim=1))
    out = net(torch.zeros(1, 4, 64, 64))
    assert out["heatmap"].shape == (1, 2, 16, 16)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError):
        build_model({**arch, "pretrained": str(tmp_path / "junk.pth")})


def test_an_ensemble_outputs_its_members_member_major_and_round_trips(tmp_path):
    """Batch B in, members x B out, member k's rows its own network's outputs; the file
    loads back as the same ensemble (a GeoNet state_dict does not fit it)."""
    torch.manual_seed(0)
    arch = {**ARCH, "members": 2}
    net = build_model(arch).eval()
    x = torch.randn(3, ARCH["in_channels"], 64, 64)
    with torch.no_grad():
        out = net(x)
        for k, member in enumerate(net.members):
            own = member(x)
            for name, value in own.items():
                torch.testing.assert_close(out[name][3 * k : 3 * k + 3], value)
    path = tmp_path / "ens.pt"
    torch.save(model_blob(net, {**META, "arch": arch}), path)
    back, meta = load_model(path)
    assert meta["arch"]["members"] == 2 and len(back.members) == 2
    single = tmp_path / "single.pt"
    torch.save(model_blob(build_model(ARCH), {**META, "arch": arch}), single)
    with pytest.raises(ModelError, match="do not fit"):
        load_model(single)
