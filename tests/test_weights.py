"""train --init: a warm start from an existing model, with the same or new classes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from _painted import write_scene

from geodetect.cli import main
from geodetect.config import load_config
from geodetect.model import build_model, load_model, make_arch
from geodetect.training import train
from geodetect.weights import warm_start

torch.set_num_threads(2)

CARS = np.array([[60.0, 60.0, 24.0, 10.0, 30.0], [190.0, 70.0, 24.0, 10.0, 120.0],
                 [70.0, 190.0, 24.0, 10.0, 75.0], [180.0, 180.0, 24.0, 10.0, 160.0]])  # fmt: skip
NEG = [shapely.box(95, 95, 160, 160)]
TINY = {"data.chip_size": 64, "model.width": 8, "train.epochs": 1, "train.chips_per_epoch": 8,
        "train.batch_size": 4, "train.val_fraction": 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A model of one class, `car`, and a label file with `car` and a new class `truck`."""
    root = tmp_path_factory.mktemp("init")
    img, labels = write_scene(root, CARS, np.full(4, np.nan), NEG)
    model = train(
        [str(img)], str(labels), None, load_config(None, TINY), root / "car", device="cpu"
    )
    names = ["truck", "car", "truck", "car"]
    _, two = write_scene(root, CARS, np.full(4, np.nan), NEG, classes=names, name="two")
    return {"root": root, "img": img, "labels": labels, "model": model, "two": two}


def test_warm_start_keeps_shared_weights_and_matches_heads_by_name(base):
    old = torch.load(base["model"], weights_only=True)["state_dict"]
    cfg = load_config(None, TINY)
    net = build_model(make_arch(3, 2, cfg.model))
    fresh_truck = net.heatmap.weight[1].clone()
    new = warm_start(net, base["model"], ["car", "truck"], [1, 2, 3])
    assert new == ["truck"]
    state = net.state_dict()
    assert torch.equal(state["heatmap.weight"][0], old["heatmap.weight"][0])  # car carried over
    assert torch.equal(state["heatmap.weight"][1], fresh_truck)  # truck starts fresh
    assert all(torch.equal(state[k], v) for k, v in old.items() if not k.startswith("heatmap"))


def test_train_init_fine_tunes_with_a_new_class_and_keeps_the_architecture(base, tmp_path):
    cfg = tmp_path / "wide.yaml"
    cfg.write_text("model:\n  width: 24\ntrain:\n  epochs: 1\n  chips_per_epoch: 8\n"
                   "  batch_size: 4\n  val_fraction: 0\ndata:\n  chip_size: 64\n")  # fmt: skip
    out = tmp_path / "ft"
    args = ["train", str(base["img"]).replace("scene.tif", "two.tif"), "--labels", str(base["two"]),
            "--config", str(cfg), "--out", str(out), "--init", str(base["model"])]  # fmt: skip
    assert main(args) == 0
    _, meta = load_model(out / "model.pt")
    assert meta["classes"] == ["car", "truck"]
    assert meta["arch"]["width"] == 8  # the init model's, not the config's 24
    _, old = load_model(base["model"])
    assert meta["gsd"] == old["gsd"]


def test_init_from_a_file_that_is_no_model_is_one_error_line(base, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    out = tmp_path / "run"
    args = ["train", str(base["img"]), "--labels", str(base["labels"]), "--out", str(out),
            "--init", str(junk)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "junk.pt" in err[0]
    assert not out.exists()
