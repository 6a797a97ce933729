"""pretrain: a self-supervised backbone from an unlabelled scene, loaded by `train`; files that
do not fit are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from _painted import write_scene

from geodetect.cli import main
from geodetect.config import load_config
from geodetect.errors import ModelError
from geodetect.model import build_model, load_model
from geodetect.pretraining import nt_xent

torch.set_num_threads(2)

CARS = np.array([[60.0, 60.0, 24.0, 10.0, 30.0], [190.0, 70.0, 24.0, 10.0, 120.0],
                 [70.0, 190.0, 24.0, 10.0, 75.0]])  # fmt: skip
SMALL = "data:\n  chip_size: 64\nmodel:\n  width: 8\n"
PRE = "pretrain:\n  epochs: 2\n  chips_per_epoch: 8\n  batch_size: 4\n"
TRAIN = "train:\n  epochs: 1\n  chips_per_epoch: 8\n  batch_size: 4\n  val_fraction: 0\n"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    img, labels = write_scene(root, CARS, np.full(3, np.nan), [shapely.box(100, 100, 160, 160)])
    cfg = root / "small.yaml"
    cfg.write_text(SMALL + PRE + TRAIN)
    wide = root / "wide.yaml"
    wide.write_text(SMALL.replace("width: 8", "width: 12") + TRAIN)
    return {"root": root, "img": img, "labels": labels, "cfg": cfg, "wide": wide}


def test_nt_xent_rewards_matching_views():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert nt_xent(z, z, 0.2) < nt_xent(z, z.roll(1, 0), 0.2)


def test_pretrain_writes_a_backbone_that_train_starts_from(scene, capsys):
    out = scene["root"] / "backbone.pt"
    assert (
        main(["pretrain", str(scene["img"]), "--out", str(out), "--config", str(scene["cfg"])]) == 0
    )
    blob = torch.load(out, weights_only=True)
    assert blob["format"] == "geodetect-backbone"
    assert blob["arch"] == {"in_channels": 3, "width": 8, "depth": 1, "backbone": "none"}
    assert len(blob["history"]) == 2 and np.isfinite(blob["history"][-1]["loss"])
    # the network built with model.pretrained starts from exactly these weights
    arch = {
        "in_channels": 3,
        "n_classes": 1,
        "width": 8,
        "backbone": "none",
        "pretrained": str(out),
    }
    net = build_model(arch)
    for k, v in blob["state_dict"].items():
        assert torch.equal(net.backbone.state_dict()[k], v), k
    fresh = build_model({**arch, "pretrained": None})
    assert not torch.equal(fresh.backbone.stem[0].weight, net.backbone.stem[0].weight)
    # and `train` takes it through the config
    cfg = scene["root"] / "with_pre.yaml"
    cfg.write_text(SMALL.replace("width: 8", f"width: 8\n  pretrained: {out}") + TRAIN)
    run = scene["root"] / "run"
    args = ["train", str(scene["img"]), "--labels", str(scene["labels"]), "--config", str(cfg),
            "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    _, meta = load_model(run / "model.pt")
    assert meta["arch"]["pretrained"] is None  # the weights live in model.pt


@pytest.mark.parametrize("case", ["width", "junk", "foreign"])
def test_a_backbone_that_does_not_fit_is_one_error_line(scene, case, capsys, tmp_path):
    pre = scene["root"] / "backbone.pt"
    if not pre.is_file():
        main(["pretrain", str(scene["img"]), "--out", str(pre), "--config", str(scene["cfg"])])
    capsys.readouterr()
    if case == "junk":
        pre = tmp_path / "junk.pt"
        pre.write_bytes(b"not torch")
    elif case == "foreign":
        pre = tmp_path / "foreign.pt"
        torch.save({"conv.weight": torch.zeros(3)}, pre)
    base = scene["wide"] if case == "width" else scene["cfg"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(base.read_text().replace("model:\n", f"model:\n  pretrained: {pre}\n"))
    out = tmp_path / "run"
    args = ["train", str(scene["img"]), "--labels", str(scene["labels"]), "--config", str(cfg),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(pre) in err[0]
    assert not out.exists()  # nothing written
    with pytest.raises(ModelError):
        arch = load_config(cfg).model
        build_model({"in_channels": 3, "n_classes": 1, "width": arch.width, "backbone": "none",
                     "pretrained": str(pre)})  # fmt: skip
