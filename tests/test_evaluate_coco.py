"""evaluate's COCO-style numbers: mAP@[.5:.95], AP by object size, the class confusion
table, and --region (sparse truth) — on painted objects whose IoUs are known exactly."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect import geometry
from geodetect.cli import main
from geodetect.evaluation import evaluate

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0


def _poly(cx, cy, length, width, angle):
    """A rectangle in the map frame (y north), angle clockwise from north."""
    corners = geometry.box_corners(np.array([[cx, cy, length, width, angle]]), y_down=False)[0]
    return shapely.Polygon(corners + [X0, Y0])


def _shifted(cx, cy, length, width, angle, iou):
    """The same rectangle moved along its length so that its IoU with the first is `iou`:
    overlap (L - d) W over union (L + d) W."""
    d = length * (1 - iou) / (1 + iou)
    dx, dy = geometry.direction(angle, y_down=False) * d
    return _poly(cx + dx, cy + dy, length, width, angle)


def _frame(rows):
    return gpd.GeoDataFrame(
        {"class": [r[0] for r in rows], "score": [r[1] for r in rows]},
        geometry=[r[2] for r in rows],
        crs=CRS,
    )


@pytest.fixture
def painted(tmp_path):
    """Vehicles (4 x 2 m = 8 m², small) found at IoU .87/.77/.67/.57, best first: AP at t is
    the share of IoUs >= t, so AP@[.5:.95] = (4+4+3+3+2+2+1+1+0+0)/40 = 0.5. Buildings: two
    large (20 x 15 m) at IoU .97 and one medium (10 x 5 m) at .72, scored last: AP 1 up to
    t = .70, 2/3 above, so (5 + 5 * 2/3) / 10 = 5/6."""
    truth, pred = [], []
    for k, u in enumerate([0.87, 0.77, 0.67, 0.57]):
        box = (30.0 * k, 0.0, 4.0, 2.0, 30.0 + 20 * k)
        truth.append(("vehicle", 1.0, _poly(*box)))
        pred.append(("vehicle", 0.9 - 0.1 * k, _shifted(*box, u)))
    for k, (size, u, score) in enumerate([((20, 15), 0.97, 0.8), ((20, 15), 0.97, 0.7)]):
        box = (40.0 * k, 100.0, *size, 75.0)
        truth.append(("building", 1.0, _poly(*box)))
        pred.append(("building", score, _shifted(*box, u)))
    box = (0.0, 200.0, 10.0, 5.0, 10.0)
    truth.append(("building", 1.0, _poly(*box)))
    pred.append(("building", 0.4, _shifted(*box, 0.72)))
    paths = tmp_path / "pred.gpkg", tmp_path / "truth.gpkg"
    _frame(pred).to_file(paths[0])
    _frame(truth).drop(columns="score").to_file(paths[1])
    return paths


def test_map_50_95_and_by_size(painted, capsys):
    assert main(["evaluate", str(painted[0]), str(painted[1])]) == 0
    m = json.loads(capsys.readouterr().out)
    vehicle, building = m["classes"]["vehicle"], m["classes"]["building"]
    assert vehicle["ap"] == pytest.approx(1.0) and building["ap"] == pytest.approx(1.0)
    assert vehicle["ap_50_95"] == pytest.approx(0.5)
    assert building["ap_50_95"] == pytest.approx(5 / 6)
    assert m["map_50_95"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert vehicle["ap_50_95_by_size"] == {
        "small": pytest.approx(0.5),
        "medium": None,
        "large": None,
    }
    assert building["ap_50_95_by_size"] == {
        "small": None,
        "medium": pytest.approx(0.5),  # matched only up to IoU .70: 5 of 10 thresholds
        "large": pytest.approx(1.0),
    }
    assert building["n_truth_by_size"] == {"small": 0, "medium": 1, "large": 2}
    assert m["map_50_95_by_size"] == {
        "small": pytest.approx(0.5),
        "medium": pytest.approx(0.5),
        "large": pytest.approx(1.0),
    }


def test_confusion_table(tmp_path):
    v1, v2, b = (0.0, 0.0, 4.0, 2.0, 0.0), (20.0, 0.0, 4.0, 2.0, 0.0), (0.0, 50.0, 20, 15, 0.0)
    truth = _frame(
        [("vehicle", 1, _poly(*v1)), ("vehicle", 1, _poly(*v2)), ("building", 1, _poly(*b))]
    )
    pred = _frame(
        [
            ("vehicle", 0.95, _poly(60.0, 60.0, 4.0, 2.0, 0.0)),  # on nothing
            ("vehicle", 0.9, _poly(*v1)),
            ("building", 0.9, _poly(*v2)),  # a vehicle called a building
            ("building", 0.85, _poly(*b)),
        ]
    )
    table = evaluate(pred, truth)["confusion"]
    assert table["vehicle"] == {"building": 1, "vehicle": 1, "missed": 0}
    assert table["building"] == {"building": 1, "vehicle": 0, "missed": 0}
    assert table["background"] == {"building": 0, "vehicle": 1, "missed": 0}


def test_region_scores_only_the_labelled_area(painted, tmp_path, capsys):
    """Truth is complete only in the vehicles' strip; a building prediction elsewhere is
    neither right nor wrong there. The region is in another CRS (lon/lat)."""
    pred = gpd.read_file(painted[0])
    extra = _frame([("vehicle", 0.95, _poly(0.0, 400.0, 4.0, 2.0, 0.0))])  # unlabelled area
    both = gpd.GeoDataFrame(gpd.pd.concat([pred, extra], ignore_index=True), crs=CRS)
    both.to_file(tmp_path / "pred2.gpkg")
    strip = gpd.GeoDataFrame(geometry=[shapely.box(X0 - 20, Y0 - 20, X0 + 120, Y0 + 20)], crs=CRS)
    strip.to_crs("EPSG:4326").to_file(tmp_path / "region.geojson")
    without = evaluate(tmp_path / "pred2.gpkg", painted[1])
    assert without["classes"]["vehicle"]["ap"] < 0.9  # the unlabelled-area hit counts as FP
    argv = ["evaluate", str(tmp_path / "pred2.gpkg"), str(painted[1])]
    assert main([*argv, "--region", str(tmp_path / "region.geojson")]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(m["classes"]) == {"vehicle"} and m["n_truth"] == 4 and m["n_pred"] == 4
    assert m["classes"]["vehicle"]["ap"] == pytest.approx(1.0)
    assert m["classes"]["vehicle"]["ap_50_95"] == pytest.approx(0.5)


def test_region_must_be_polygons(painted, tmp_path, capsys):
    pts = gpd.GeoDataFrame(geometry=[shapely.Point(X0, Y0)], crs=CRS)
    pts.to_file(tmp_path / "pts.gpkg")
    argv = ["evaluate", str(painted[0]), str(painted[1]), "--region", str(tmp_path / "pts.gpkg")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "polygons" in err
