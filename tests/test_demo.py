"""demo: the whole job end to end (quick settings: plumbing, not quality)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pyogrio

from geodetect.cli import main


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    train_images = [Path(v) for v in result["files"].pop("train_images")]
    files = {k: Path(v) for k, v in result["files"].items()}
    for path in [*files.values(), *train_images]:
        assert path.exists(), path
    # train and test scenes are different files from different seeds
    assert files["test_image"] not in train_images
    assert all(p.read_bytes() != files["test_image"].read_bytes() for p in train_images)
    # one label file covers the training scenes, each row naming its scene
    labels = gpd.read_file(files["train_labels"])
    assert set(labels["image"]) == {p.name for p in train_images}
    det = gpd.read_file(files["detections"])
    truth = gpd.read_file(files["test_truth"])
    assert det.crs == truth.crs
    assert sorted(name for name, _ in pyogrio.list_layers(files["errors"])) == [
        "false_negatives",
        "false_positives",
    ]
    metrics = result["metrics"]
    assert set(metrics["classes"]) >= set(truth["class"])
    positives = truth[truth["label"] == "positive"]
    for name, c in metrics["classes"].items():
        assert c["n_truth"] == int((positives["class"] == name).sum())
        assert c["n_pred"] == int((det["class"] == name).sum())
    # the summary names every class and where the files are
    for name in metrics["classes"]:
        assert name in printed
    assert str(files["detections"]) in printed and str(train_images[0]) in printed
