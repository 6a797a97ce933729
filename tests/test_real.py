"""Real imagery: the committed NEON crop (data/) trains, and orientation-free classes go from
labels to model to axis-aligned detections."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from _painted import write_scene

from geodetect.config import load_config
from geodetect.errors import LabelError
from geodetect.project import load_project
from geodetect.training import train

torch.set_num_threads(2)

DATA = Path(__file__).resolve().parents[1] / "data"
CROP, CROWNS = DATA / "yell_crowns.tif", DATA / "yell_crowns.geojson"
QUICK = {
    "data.gsd": 0.2,
    "data.chip_size": 64,
    "model.width": 8,
    "train.epochs": 12,
    "train.chips_per_epoch": 64,
    "train.batch_size": 8,
    "train.val_fraction": 0.0,
    "train.recolour": 0.0,  # crowns keep their colours, as in configs/trees.yaml
    "infer.tile": 128,
    "infer.overlap": 32,
}


def _is_axis_aligned(geom) -> bool:
    xy = shapely.get_coordinates(geom)[:4]
    return len(np.unique(xy[:, 0].round(6))) == 2 and len(np.unique(xy[:, 1].round(6))) == 2


def test_real_crop_trains_an_orientation_free_crown_detector(tmp_path):
    """Labels drawn as upright boxes (as DeepForest's are) make `tree` orientation-free on its
    own; a short run on the real crop then puts most of its best detections on crowns (crowns
    cover about 8 % of the crop), every one an upright box with angle 0 and no heading."""
    from geodetect.inference import infer
    from geodetect.model import load_model

    model = train([str(CROP)], str(CROWNS), None, load_config(None, QUICK), tmp_path / "run",
                  device="cpu")  # fmt: skip
    _, meta = load_model(model)
    assert meta["orientation_free"] == [True] and meta["has_front"] == [False]
    det = gpd.read_file(infer(model, [str(CROP)], out=tmp_path / "d.gpkg", device="cpu",
                              threshold=0.1))  # fmt: skip
    assert len(det) >= 10
    assert (det["angle_deg"] == 0.0).all() and det["heading_deg"].isna().all()
    assert all(_is_axis_aligned(g) for g in det.geometry)
    truth = gpd.read_file(CROWNS)
    crowns = truth[truth["label"] == "positive"].to_crs(det.crs).geometry
    top = det.sort_values("score", ascending=False).head(10)
    on_crown = [bool(crowns.contains(c).any()) for c in top.geometry.centroid]
    assert sum(on_crown) >= 6


def _squares(folder: Path, angle: float, heads: float = np.nan, classes=None):
    boxes = np.array([[60, 60, 20, 20, angle], [180, 70, 30, 24, angle], [70, 180, 16, 16, angle]])
    neg = [shapely.box(120, 120, 250, 250)]
    return write_scene(folder, boxes.astype(float), np.full(3, heads), neg, classes=classes)


def _upright(paths, setting="auto") -> list[bool]:
    config = load_config(None, {"model.orientation_free": setting})
    return load_project([str(paths[0])], str(paths[1]), None, config).upright


def test_orientation_free_is_inferred_from_upright_labels_or_declared(tmp_path):
    assert _upright(_squares(tmp_path / "a", 0.0)) == [True]
    assert _upright(_squares(tmp_path / "b", 90.0)) == [True]
    turned = _squares(tmp_path / "c", 30.0)
    assert _upright(turned) == [False]
    assert _upright(turned, ["car"]) == [True]  # declared: turned labels, upright output
    assert _upright(_squares(tmp_path / "d", 0.0), []) == [False]  # declared none
    with pytest.raises(LabelError, match="tank"):
        _upright(turned, ["tank"])
    with pytest.raises(LabelError, match="heading"):
        _upright(_squares(tmp_path / "e", 30.0, heads=30.0), ["car"])
    assert _upright(_squares(tmp_path / "f", 0.0, heads=0.0)) == [False]  # a front: oriented
