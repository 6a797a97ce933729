"""evaluate: greedy rotated-IoU matching, VOC AP, best-F1 threshold, angle errors, error layers."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from _shapes import rect

from geodetect.cli import main
from geodetect.evaluation import comparison_crs, evaluate, precision_recall_curves
from geodetect.geometry import boxes_from_corners
from geodetect.matching import class_metrics

TRUTH = np.array([[0, 0, 4, 2, 10], [10, 0, 4, 2, 170], [20, 0, 4, 2, 90]], float)


def test_perfect_predictions_score_one():
    r = class_metrics(TRUTH.copy(), np.array([0.9, 0.8, 0.7]), TRUTH, 0.5)
    assert r["ap"] == pytest.approx(1.0)
    assert (r["precision"], r["recall"], r["f1"]) == (1.0, 1.0, 1.0)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 0, 0)
    assert r["threshold"] == pytest.approx(0.7)
    assert r["angle_error_median"] == pytest.approx(0.0, abs=1e-9)
    assert r["heading_error_mean"] is None  # no headings given


def test_hand_computed_case():
    pred = np.array(
        [
            [0, 0, 4, 2, 12],  # matches truth 0, angle error 2
            [10.1, 0, 4, 2, 2],  # matches truth 1 across the 0/180 wrap, angle error 12
            [50, 0, 4, 2, 0],  # far from everything: false positive
            [0, 0, 4, 2, 10],  # duplicate of truth 0, already taken: false positive
        ]
    )
    r = class_metrics(
        pred,
        np.array([0.9, 0.8, 0.7, 0.6]),
        TRUTH,
        0.5,
        pred_headings=np.array([10, 350, 0, np.nan]),
        truth_headings=np.array([190, 355, np.nan]),
    )
    assert r["ap"] == pytest.approx(2 / 3)
    assert r["threshold"] == pytest.approx(0.8)
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_truth"]) == (2, 0, 1, 4, 3)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(0.8)
    assert r["angle_error_mean"] == pytest.approx(7.0, abs=1e-6)
    assert r["heading_error_mean"] == pytest.approx(92.5, abs=1e-6)  # 180 and 5
    assert r["heading_correct_rate"] == pytest.approx(0.5)
    assert r["precisions"] == pytest.approx([1, 1, 2 / 3, 0.5])
    assert r["recalls"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])
    json.dumps(r)  # JSON-serialisable


def test_ap_interpolates_precision_envelope():
    truth = TRUTH[:2]
    pred = np.array([TRUTH[0], [80, 80, 4, 2, 0], TRUTH[1]])
    r = class_metrics(pred, np.array([0.9, 0.8, 0.7]), truth, 0.5)
    # PR points (1, .5), (.5, .5), (2/3, 1): AP = .5 * 1 + .5 * 2/3
    assert r["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert r["threshold"] == pytest.approx(0.7)  # F1 0.8 at all three beats 0.667 at one


def test_iou_threshold_is_exact_rotated_iou():
    # same centre and size, rotated by 90°: the rotated IoU of a 4x2 box is 4/12 = 1/3
    pred = np.array([[0, 0, 4, 2, 100]])
    truth = np.array([[0, 0, 4, 2, 10]])
    assert class_metrics(pred, np.array([1.0]), truth, 0.3)["tp"] == 1
    assert class_metrics(pred, np.array([1.0]), truth, 0.34)["tp"] == 0


def test_groups_keep_images_apart():
    pred = np.array([TRUTH[0], TRUTH[0]])
    r = class_metrics(
        pred,
        np.array([0.9, 0.8]),
        TRUTH[:1],
        0.5,
        pred_groups=["b.tif", "a.tif"],
        truth_groups=["a.tif"],
    )
    assert (r["tp"], r["fn"]) == (1, 0)
    assert r["threshold"] == pytest.approx(0.8)  # only the a.tif prediction matches
    assert r["ap"] == pytest.approx(0.5)


def test_empty_inputs():
    none = np.empty((0, 5))
    r = class_metrics(none, np.empty(0), TRUTH, 0.5)
    assert r["ap"] == 0.0 and r["recall"] == 0.0 and r["fn"] == 3 and r["threshold"] is None
    r = class_metrics(TRUTH, np.ones(3), none, 0.5)
    assert r["ap"] is None and r["recall"] is None and r["fp"] == 0 and r["n_pred"] == 3
    r = class_metrics(none, np.empty(0), none, 0.5)
    assert r["ap"] is None and r["tp"] == 0
    json.dumps(r)


def test_many_boxes_match_like_dense():
    """The spatial pre-filter must not lose pairs: jittered copies all match their truth."""
    rng = np.random.default_rng(0)
    n = 400
    truth = np.column_stack(
        [
            rng.uniform(0, 500, n),
            rng.uniform(0, 500, n),
            np.full(n, 8.0),
            np.full(n, 3.0),
            rng.uniform(0, 180, n),
        ]
    )
    keep = np.ones(n, bool)
    for i in range(n):  # drop truths that overlap another (ambiguous matches)
        d = np.hypot(*(truth[:, :2] - truth[i, :2]).T)
        keep[i] = np.sum(d < 10) == 1
    truth = truth[keep]
    pred = truth + np.column_stack([rng.normal(0, 0.2, (len(truth), 2)), np.zeros((len(truth), 3))])
    r = class_metrics(pred, rng.uniform(0.5, 1, len(truth)), truth, 0.5)
    assert r["tp"] == len(truth) and r["ap"] == pytest.approx(1.0)


# ---------------------------------------------------------------- files and CLI


@pytest.fixture
def files(tmp_path):
    x0, y0 = 500_000.0, 5_000_000.0
    truth = gpd.GeoDataFrame(
        {
            "label": ["positive", "positive", "positive", "negative"],
            "class": ["vehicle", "vehicle", "building", None],
            "heading_deg": [30.0, 200.0, None, None],
        },
        geometry=[
            rect(x0 + 10, y0 + 10, 4.5, 2, 30),
            rect(x0 + 30, y0 + 10, 4.5, 2, 20),
            rect(x0 + 60, y0 + 40, 12, 8, 100),
            shapely.box(x0, y0, x0 + 100, y0 + 100),
        ],
        crs="EPSG:32633",
    )
    pred = gpd.GeoDataFrame(
        {
            "class": ["vehicle", "vehicle", "building"],
            "score": [0.9, 0.6, 0.8],
            "angle_deg": [32.0, 0.0, 100.0],
            "heading_deg": [212.0, 0.0, None],
            "length_m": [4.5, 4.5, 12],
            "width_m": [2.0, 2, 8],
            "image": ["s.tif"] * 3,
        },
        geometry=[
            rect(x0 + 10, y0 + 10, 4.5, 2, 32),
            rect(x0 + 80, y0 + 80, 4.5, 2, 0),
            rect(x0 + 60, y0 + 40, 12, 8, 100),
        ],
        crs="EPSG:32633",
    )
    t, p = tmp_path / "truth.gpkg", tmp_path / "pred.gpkg"
    truth.to_file(t, driver="GPKG")
    # truth in another CRS must be reprojected before matching
    pred.to_crs("EPSG:4326").to_file(tmp_path / "pred4326.geojson", driver="GeoJSON")
    pred.to_file(p, driver="GPKG")
    return p, t, tmp_path


def test_evaluate_files_per_class(files):
    pred, truth, _ = files
    r = evaluate(pred, truth, iou=0.5)
    v, b = r["classes"]["vehicle"], r["classes"]["building"]
    assert (v["tp"], v["fp"], v["fn"]) == (1, 0, 1)
    assert v["ap"] == pytest.approx(0.5)
    assert v["angle_error_median"] == pytest.approx(2.0, abs=1e-3)  # map frame
    assert v["heading_error_median"] == pytest.approx(178.0, abs=1e-3)
    assert v["heading_correct_rate"] == 0.0
    assert b["ap"] == pytest.approx(1.0)
    assert r["mean_ap"] == pytest.approx(0.75)
    assert "precisions" not in v
    json.dumps(r)


SAME = ("tp", "fp", "fn", "ap", "threshold", "angle_error_median", "heading_error_median")


def _same_metrics(a: dict, b: dict) -> None:
    for name in ("vehicle", "building"):
        for key in SAME:
            x, y = a["classes"][name][key], b["classes"][name][key]
            assert x == (None if y is None else pytest.approx(y, abs=1e-3)), (name, key)


def test_evaluate_reprojects_truth(files):
    pred, truth, tmp = files
    r = evaluate(tmp / "pred4326.geojson", truth, iou=0.5)
    assert r["classes"]["building"]["tp"] == 1
    assert r["classes"]["vehicle"]["tp"] == 1
    # compared in the truth's UTM zone, not in degrees: the same numbers as without reprojecting
    _same_metrics(r, evaluate(pred, truth, iou=0.5))


def test_evaluate_both_geographic_uses_local_utm(files):
    pred, truth, tmp = files
    t4326 = tmp / "truth4326.gpkg"
    gpd.read_file(truth).to_crs("EPSG:4326").to_file(t4326, driver="GPKG")
    r = evaluate(tmp / "pred4326.geojson", t4326, iou=0.5)
    _same_metrics(r, evaluate(pred, truth, iou=0.5))
    p, t = gpd.read_file(tmp / "pred4326.geojson"), gpd.read_file(t4326)
    assert comparison_crs(p, t).to_epsg() == 32633  # 15°E, 45°N


def test_comparison_crs_prefers_projected(files):
    pred, truth, tmp = files
    p, t = gpd.read_file(pred), gpd.read_file(truth)
    p3857 = p.to_crs("EPSG:3857")
    assert comparison_crs(p3857, t) == p3857.crs  # the predictions' when projected
    assert comparison_crs(p.to_crs("EPSG:4326"), t) == t.crs  # else the truth's
    nocrs = p.set_crs(None, allow_override=True)
    assert comparison_crs(nocrs, t.set_crs(None, allow_override=True)) is None  # pixel frame


def test_headings_follow_meridian_convergence(tmp_path):
    """Polar stereographic grid north is ~60° off UTM's at 15°E: headings must turn with it."""
    x0, y0 = 500_000.0, 7_800_000.0  # UTM 33N, about 15°E 70°N
    heads = [30.0, 200.0, 290.0]  # fronts on the long axis, both ends; one on a short side
    # corner order carries the front (FL, FR, BR, BL): rect at the heading puts it there
    polys = [rect(x0 + 20 * i, y0, 4.5, 2, h) for i, h in enumerate(heads)]
    polys[2] = rect(x0 + 40, y0, 2, 4.5, heads[2])  # front on a long side: 2 m deep, 4.5 wide
    truth = gpd.GeoDataFrame(
        {"label": ["positive"] * 3, "class": ["vehicle"] * 3, "heading_deg": heads},
        geometry=polys,
        crs="EPSG:32633",
    )
    stereo = truth.drop(columns="label").to_crs("EPSG:3413")
    corners = shapely.get_coordinates(stereo.geometry.exterior).reshape(-1, 5, 2)[:, :4]
    _, heading = boxes_from_corners(corners, y_down=False)
    assert np.all(np.abs(((heading - heads + 180) % 360) - 180) > 45)  # a large turn
    stereo["heading_deg"], stereo["score"] = heading, 1.0
    t, p = tmp_path / "truth.gpkg", tmp_path / "pred.gpkg"
    truth.to_file(t, driver="GPKG")
    stereo.to_file(p, driver="GPKG")
    v = evaluate(p, t, iou=0.5)["classes"]["vehicle"]
    assert v["tp"] == 3
    assert v["angle_error_mean"] == pytest.approx(0.0, abs=1e-3)
    assert v["heading_error_mean"] == pytest.approx(0.0, abs=1e-3)
    assert v["heading_correct_rate"] == 1.0


def test_image_field_matched_by_file_name(files):
    """Truth naming its scene by a path (any OS) still matches detections naming the file."""
    pred, truth, tmp = files
    t = gpd.read_file(truth).assign(image="C:\\data\\s.tif")
    t.to_file(tmp / "t_path.gpkg", driver="GPKG")
    r = evaluate(pred, tmp / "t_path.gpkg", iou=0.5)
    assert (r["classes"]["vehicle"]["tp"], r["classes"]["building"]["tp"]) == (1, 1)
    t.assign(image="other.tif").to_file(tmp / "t_other.gpkg", driver="GPKG")
    r = evaluate(pred, tmp / "t_other.gpkg", iou=0.5)
    assert (r["classes"]["vehicle"]["tp"], r["classes"]["building"]["tp"]) == (0, 0)


def test_hand_drawn_and_multipolygon_truth(files):
    """Truth as QGIS saves it: one-part MultiPolygons, corners a few cm off square."""
    pred, truth, tmp = files
    t = gpd.read_file(truth)
    pos = (t["label"] == "positive").to_numpy()
    rng = np.random.default_rng(0)
    geoms = []
    for g, is_pos in zip(t.geometry, pos, strict=True):
        if is_pos:
            c = np.asarray(g.exterior.coords)[:4] + rng.normal(0, 0.01, (4, 2))
            g = shapely.MultiPolygon([shapely.Polygon(c)])
        geoms.append(g)
    t = t.set_geometry(gpd.GeoSeries(geoms, crs=t.crs))
    drawn = tmp / "drawn.gpkg"
    t.to_file(drawn, driver="GPKG")
    r = evaluate(pred, drawn, iou=0.5)
    assert (r["classes"]["vehicle"]["tp"], r["classes"]["building"]["tp"]) == (1, 1)


def test_errors_layers(files):
    pred, truth, tmp = files
    out = tmp / "errors.gpkg"
    evaluate(pred, truth, iou=0.5, errors=out)
    layers = [name for name, _ in pyogrio.list_layers(out)]
    assert sorted(layers) == ["false_negatives", "false_positives"]
    fn = gpd.read_file(out, layer="false_negatives")
    fp = gpd.read_file(out, layer="false_positives")
    assert list(fn["class"]) == ["vehicle"] and fn.geometry.centroid.x.iloc[0] == pytest.approx(
        500_030
    )
    # the 0.6 vehicle is below the best-F1 threshold (0.9), so it is not counted as an error
    assert len(fp) == 0
    assert fn.crs == gpd.read_file(truth).crs


def test_cli_prints_json(files, capsys):
    pred, truth, _ = files
    assert main(["evaluate", str(pred), str(truth), "--iou", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"]["building"]["ap"] == pytest.approx(1.0)


def test_cli_errors_in_missing_folder(files, capsys):
    pred, truth, tmp = files
    bad = tmp / "nope" / "errors.gpkg"
    assert main(["evaluate", str(pred), str(truth), "--errors", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not bad.parent.exists()


def test_cli_bad_files(files, capsys):
    pred, _, tmp = files
    assert main(["evaluate", str(pred), str(tmp / "missing.gpkg")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["evaluate", str(pred), str(pred), "--iou", "0"]) == 2


# ---------------------------------------------------------------- PR curves


def test_pr_curves_perfect(files):
    _, truth, _ = files
    t = gpd.read_file(truth)
    perfect = t[t["label"] == "positive"].drop(columns="label").assign(score=[0.9, 0.7, 0.8])
    curves = precision_recall_curves(perfect, truth)
    assert sorted(curves) == ["building", "vehicle"]
    v = curves["vehicle"]
    assert v["precision"] == [1.0, 1.0]
    assert v["recall"] == pytest.approx([0.5, 1.0])
    assert v["scores"] == pytest.approx([0.9, 0.7])
    assert v["ap"] == pytest.approx(1.0) and curves["building"]["ap"] == pytest.approx(1.0)
    json.dumps(curves)


def test_pr_curves_false_positive_at_its_score(files):
    pred, truth, tmp = files
    p = gpd.read_file(pred)
    # the 0.6 vehicle is a false positive; move the missed truth's twin in at 0.5
    twin = p.iloc[[0]].assign(score=0.5)
    twin = twin.set_geometry([rect(500_030, 5_000_010, 4.5, 2, 20)], crs=p.crs)
    both = tmp / "pred_fp.gpkg"
    gpd.GeoDataFrame(pd.concat([p, twin], ignore_index=True), crs=p.crs).to_file(both)
    v = precision_recall_curves(both, truth, iou=0.5)["vehicle"]
    assert v["scores"] == pytest.approx([0.9, 0.6, 0.5])
    assert v["precision"] == pytest.approx([1.0, 0.5, 2 / 3])  # drops at the FP's 0.6
    assert v["recall"] == pytest.approx([0.5, 0.5, 1.0])
    assert v["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # the same matching as evaluate's
    r = evaluate(both, truth, iou=0.5, curves=True)["classes"]["vehicle"]
    assert (r["precisions"], r["recalls"], r["ap"]) == (v["precision"], v["recall"], v["ap"])


def test_pr_curves_bad_iou(files):
    pred, truth, _ = files
    with pytest.raises(ValueError):
        precision_recall_curves(pred, truth, iou=1.5)
