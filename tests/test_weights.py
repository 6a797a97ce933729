"""train --init: a warm start from an existing model, with the same or new classes."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from _painted import write_scene

from geodetect.cli import main
from geodetect.config import load_config
from geodetect.errors import InputError, ModelError
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


def test_members_train_apart_and_are_saved_as_one_ensemble(base, tmp_path):
    """model.members 2: two whole runs (seeds 0 and 1) in member1/ and member2/, their weights
    under members.K. of model.pt with each one's size calibration; progress counts the steps
    of both; `--init` from it fine-tunes both members, member K from member K; it detects."""
    import json

    from geodetect.inference import infer

    steps: list[tuple[int, int, int]] = []
    cfg = load_config(None, {**TINY, "model.members": 2, "train.member_processes": 1})
    out = tmp_path / "ens"

    def seen(e: dict) -> None:
        steps.append((e["step"], e["total_steps"], e["member"]))

    path = train([str(base["img"])], str(base["labels"]), None, cfg, out, device="cpu",
                 callback=seen)  # fmt: skip
    blob = torch.load(path, weights_only=True)
    assert blob["arch"]["members"] == 2 and len(blob["member_size_scale"]) == 2
    own = [torch.load(out / f"member{k}" / "model.pt", weights_only=True) for k in (1, 2)]
    for k, member in enumerate(own):
        assert member["arch"].get("members", 1) == 1
        for key, value in member["state_dict"].items():
            assert torch.equal(blob["state_dict"][f"members.{k}.{key}"], value)
    heads = [m["state_dict"]["heatmap.weight"] for m in own]
    assert not torch.equal(*heads)  # seeds 0 and 1
    assert [s for s, _, _ in steps] == list(range(1, steps[-1][1] + 1))  # one bar, filled once
    assert [m for *_, m in steps] == sorted(m for *_, m in steps) and steps[-1][2] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["dir"] for m in metrics["members"]] == ["member1", "member2"]

    net = build_model(make_arch(3, 1, load_config(None, TINY).model))
    warm_start(net, path, ["car"], [1, 2, 3], member=1)
    assert all(torch.equal(v, own[1]["state_dict"][k]) for k, v in net.state_dict().items())
    fine = train([str(base["img"])], str(base["labels"]), None, load_config(None, TINY),
                 tmp_path / "fine", device="cpu", init=path)  # fmt: skip
    assert torch.load(fine, weights_only=True)["arch"]["members"] == 2  # the init's, kept

    found = gpd.read_file(infer(path, [str(base["img"])], out=tmp_path / "d.gpkg", threshold=0.0))
    assert len(found) > 0 and set(found["class"]) == {"car"}

    # a member's file as the backbone of a new ensemble in the same folder: member 1 would
    # overwrite it before member 2 reads it
    before = (out / "member1" / "model.pt").read_bytes()
    reuse = {**TINY, "model.members": 2, "model.pretrained": str(out / "member1" / "model.pt")}
    with pytest.raises(InputError, match="member1"):
        train([str(base["img"])], str(base["labels"]), None, load_config(None, reuse), out,
              device="cpu")  # fmt: skip
    assert (out / "member1" / "model.pt").read_bytes() == before


def test_members_side_by_side_train_the_networks_of_one_by_one(base, tmp_path):
    """train.member_processes 2: a process per member at one thread each (with a DataLoader
    worker of its own) gives the weights a one-by-one run at one thread gives; progress is one
    bar over both members; an exception in the callback (napari's cancel) stops both."""
    import multiprocessing as mp

    ens = {**TINY, "model.members": 2, "train.epochs": 2}
    steps: list[tuple[int, int, int]] = []

    def seen(e: dict) -> None:
        steps.append((e["step"], e["total_steps"], e["member"]))

    side_cfg = {**ens, "train.member_processes": 2, "train.workers": 1}  # a member's own worker
    side = train([str(base["img"])], str(base["labels"]), None, load_config(None, side_cfg),
                 tmp_path / "side", device="cpu", callback=seen)  # fmt: skip
    torch.set_num_threads(1)
    try:
        one = train([str(base["img"])], str(base["labels"]), None,
                    load_config(None, {**ens, "train.member_processes": 1}), tmp_path / "one",
                    device="cpu")  # fmt: skip
    finally:
        torch.set_num_threads(2)
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (side, one))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [s for s, _, _ in steps] == list(range(1, steps[-1][1] + 1))
    assert steps[-1][1] == 2 * 2 * 2 and {m for *_, m in steps} == {1, 2}

    def cancel(event: dict) -> None:
        if event["step"] >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train([str(base["img"])], str(base["labels"]), None,
              load_config(None, {**ens, "train.member_processes": 2}), tmp_path / "stop",
              device="cpu", callback=cancel)  # fmt: skip
    assert not mp.active_children()
    assert not (tmp_path / "stop" / "model.pt").exists()


def test_a_member_error_side_by_side_is_the_callers_error(base, tmp_path):
    """A backbone file that does not fit fails in each member process; the caller gets the
    error itself (the CLI's one line), nothing is written."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    cfg = {**TINY, "model.members": 2, "train.member_processes": 2, "model.pretrained": str(junk)}
    with pytest.raises(ModelError, match="junk.pt"):
        train([str(base["img"])], str(base["labels"]), None, load_config(None, cfg),
              tmp_path / "bad", device="cpu")  # fmt: skip
    assert not (tmp_path / "bad" / "model.pt").exists()
