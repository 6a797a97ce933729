"""The job runner behind the dock: long work in a child process, errors as one line, cancel.

Qt-free (no napari needed); the child runs the real library code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pytest

from geodetect.jobs import Job, train_params

TINY = {
    "train.epochs": 1,
    "train.chips_per_epoch": 16,
    "train.batch_size": 4,
    "data.chip_size": 64,
    "model.width": 8,
}


def test_an_error_in_the_job_is_one_line_and_the_parent_lives(tmp_path: Path, sample_small) -> None:
    """Issue 12.3: training with nothing labelled raised in a worker thread and aborted
    napari; now the child reports one line and exits."""
    empty = gpd.GeoDataFrame(
        {"label": [], "class": [], "heading_deg": []}, geometry=[], crs="EPSG:32633"
    )
    labels = tmp_path / "none.gpkg"
    empty.to_file(labels)
    job = Job("train", train_params([str(sample_small.image)], labels, tmp_path / "run"))
    job.wait(120)
    assert job.result is None
    assert job.error and "\n" not in job.error and "Traceback" not in job.error
    assert not (tmp_path / "run" / "model.pt").exists()


def test_cancel_kills_the_child(tmp_path: Path, sample_small) -> None:
    params = train_params(
        [str(sample_small.image)],
        sample_small.labels,
        tmp_path / "run",
        None,
        {**TINY, "train.epochs": 500},
    )
    job = Job("train", params)
    time.sleep(1.0)
    job.cancel()
    job.wait(30)
    assert job.error == "train cancelled" and job.result is None
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_crashed_child_is_reported(tmp_path: Path) -> None:
    job = Job(
        "detect", {"model": "x", "image": "y", "out": str(tmp_path / "d.gpkg")}, python="false"
    )
    job.wait(30)
    assert job.error.startswith("detect stopped unexpectedly (exit status 1)")


_GUI_SIDE = """
import json, sys
import geodetect.plugin._dock  # noqa: F401  (the dock and everything it imports)
from geodetect.jobs import Job, train_params
p = json.loads(sys.argv[1])
job = Job("train", train_params([p["image"]], p["labels"], p["out"], None, p["tiny"]))
job.wait(300)
assert job.result, job.error
det = Job("detect", {"model": job.result["model"], "image": p["image"], "threshold": 0.0,
                     "out": p["det"], "region": None})
det.wait(300)
assert det.result, det.error
flags = {m: m in sys.modules for m in ("torch", "torch._dynamo")}
print(json.dumps({"model": job.result["model"], "imports": flags}))
"""


@pytest.fixture(scope="module")
def gui_side_run(sample_small, tmp_path_factory) -> dict:
    """A process that imports the dock, then trains (tiny) and detects through jobs."""
    tmp = tmp_path_factory.mktemp("gui_side")
    params = {
        "image": str(sample_small.image),
        "labels": str(sample_small.labels),
        "out": str(tmp / "run"),
        "det": str(tmp / "det.gpkg"),
        "tiny": TINY,
    }
    run = subprocess.run(
        [sys.executable, "-c", _GUI_SIDE, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "det": params["det"]}


def test_the_gui_process_never_imports_torch(gui_side_run) -> None:
    """Issue 12.1/12.2: torch._dynamo (LLVM) in napari's process segfaulted under Mesa and
    pyproj crashed in a worker thread; the dock's process runs a real train and detect and
    still has no torch."""
    assert gui_side_run["imports"] == {"torch": False, "torch._dynamo": False}
    det = gpd.read_file(gui_side_run["det"])
    assert det.crs.to_epsg() == 32633 and len(det) > 0


def test_detect_job_is_the_cli_in_the_scene_crs(gui_side_run, sample_small, tmp_path) -> None:
    """Issue 15.1: the plugin rebuilt its own pipeline and skipped the CLI's conversion back
    to the scene's CRS. On an EPSG:4326 scene the job's file equals `geodetect infer`'s, in
    EPSG:4326; a region gives the same objects inside it."""
    import rasterio
    from rasterio.warp import calculate_default_transform, reproject

    from geodetect.cli import main

    geo = tmp_path / "geo.tif"
    with rasterio.open(sample_small.image) as src:
        transform, w, h = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        profile = {
            **src.profile,
            "crs": "EPSG:4326",
            "transform": transform,
            "width": w,
            "height": h,
            "nodata": 0,
        }
        with rasterio.open(geo, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b))
    model = gui_side_run["model"]
    cli_out = tmp_path / "cli.gpkg"
    assert main(["infer", model, str(geo), "--out", str(cli_out), "--threshold", "0"]) == 0
    job = Job(
        "detect",
        {"model": model, "image": str(geo), "threshold": 0.0, "out": str(tmp_path / "job.gpkg")},
    )
    job.wait(300)
    assert job.error is None, job.error
    cli, got = gpd.read_file(cli_out), gpd.read_file(job.result["detections"])
    assert got.crs.to_epsg() == 4326 and len(got) == len(cli) > 0
    assert got.geometry.union_all().symmetric_difference(cli.geometry.union_all()).area < 1e-12
    assert got["image"].eq("geo.tif").all()
    # the western half, as the dock sends it (scene CRS bounds)
    left, bottom, right, top = rasterio.open(geo).bounds
    region = {"bounds": [left, bottom, (left + right) / 2, top], "crs": "EPSG:4326"}
    half = Job(
        "detect",
        {
            "model": model,
            "image": str(geo),
            "threshold": 0.0,
            "region": region,
            "out": str(tmp_path / "half.gpkg"),
        },
    )
    half.wait(300)
    assert half.error is None, half.error
    part = gpd.read_file(half.result["detections"])
    # the region is infer's area of interest: the CLI's detections whose centre is inside it
    mid = (left + right) / 2
    inside = cli[cli.geometry.centroid.x < mid]
    assert part.crs.to_epsg() == 4326 and 0 < len(part) == len(inside) < len(cli)
    assert (part.geometry.centroid.x < mid).all()


@pytest.mark.parametrize("kind", ["nope"])
def test_unknown_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValueError):
        Job(kind, {})
