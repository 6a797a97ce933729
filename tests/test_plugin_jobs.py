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


def _group_alive(pgid: int) -> bool:
    """Whether any process of the process group is left (zombies not counted)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_an_ensemble_trains_side_by_side_in_the_job_and_cancel_stops_every_member(
    tmp_path: Path, sample_small
) -> None:
    """The job's child spawns a process per member: progress (with the member) and the
    result still come back on its stdout protocol; a cancel stops the members too."""
    import torch

    ens = {**TINY, "model.members": 2, "train.member_processes": 2}
    img = [str(sample_small.image)]
    job = Job("train", train_params(img, sample_small.labels, tmp_path / "ens", None, ens))
    job.wait(300)
    assert job.error is None, job.error
    # progress is sent at most every 0.2 s: the last one seen need not be the last step
    assert job.progress["members"] == 2 and job.progress["total_steps"] == 2 * 4
    model = torch.load(job.result["model"], weights_only=True)
    assert model["arch"]["members"] == 2

    long = {**ens, "train.epochs": 500}
    job = Job("train", train_params(img, sample_small.labels, tmp_path / "stop", None, long))
    t0 = time.monotonic()
    while "member" not in job.progress and time.monotonic() - t0 < 120:
        job.poll()
        time.sleep(0.1)
    assert job.progress.get("member"), "the members never reported a step"
    job.cancel()
    job.wait(30)
    assert job.error == "train cancelled"
    time.sleep(0.5)
    assert not _group_alive(job.pid)
    assert not (tmp_path / "stop" / "model.pt").exists()


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


_FRESH_NAPARI = """
import json, sys, time

seen = []


class _Watch:  # every attempt to import torch in this process, found or not
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            seen.append(name)
        return None


sys.meta_path.insert(0, _Watch())
import napari
import numpy as np
from qtpy.QtWidgets import QApplication

p = json.loads(sys.argv[1])
viewer = napari.Viewer(show=True)
app = QApplication.instance()
viewer.open(p["image"], plugin="geodetect")
scene = viewer.screenshot(canvas_only=True)  # draws the scene with GL (Mesa under xvfb)
from vispy.gloo import gl

renderer = gl.glGetParameter(gl.GL_RENDERER)
from geodetect.plugin._dock import GeodetectWidget

dock = GeodetectWidget(viewer)
viewer.window.add_dock_widget(dock, name="geodetect")
assert dock.load_labels(p["labels"], ask=False), dock.last_error
tab = dock.train_tab
tab.config.setText(p["config"])
tab.epochs.setValue(1)
tab.out.setText(p["out"])


def wait():
    t0 = time.monotonic()
    while dock.busy:
        app.processEvents()
        time.sleep(0.01)
        assert time.monotonic() - t0 < 400, "job still running"
    assert dock.last_error is None, dock.last_error


tab.train_button.click()
assert dock.job is not None and dock.job.kind == "train"
wait()
dock.detect_tab.threshold.setValue(0.0)
dock.detect_tab.scene_button.click()
wait()
shown = viewer.screenshot(canvas_only=True)  # and draws the detections
print(json.dumps({
    "model": str(dock.model_path),
    "detections": len(dock.layer("detections").data),
    "renderer": str(renderer),
    "scene_drawn": bool(scene.std() > 0 and shown.std() > 0),
    "torch_imports": seen,
    "torch_loaded": [m for m in sys.modules if m.split(".")[0] == "torch"],
}))
viewer.close()
"""


@pytest.mark.gui
def test_napari_with_a_gl_context_trains_and_detects_without_torch(
    sample_small, tmp_path: Path
) -> None:
    """Issue 12.1/12.2 end to end: a fresh python opens a napari window that draws with GL,
    builds the dock, trains (tiny) and detects through the dock's jobs, and exits 0 with
    torch never imported (the in-process loop test cannot see that when an earlier test
    module imported torch)."""
    import os

    (tmp_path / "tiny.yaml").write_text(
        "train: {epochs: 1, chips_per_epoch: 16, batch_size: 4}\n"
        "data: {chip_size: 64}\nmodel: {width: 8}\n"
    )
    params = {
        "image": str(sample_small.image),
        "labels": str(sample_small.labels),
        "config": str(tmp_path / "tiny.yaml"),
        "out": str(tmp_path / "models"),
    }
    assert os.environ.get("DISPLAY"), "run under xvfb-run: napari needs a GL context"
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}  # a real window, never `offscreen`
    run = subprocess.run(
        [sys.executable, "-c", _FRESH_NAPARI, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    print("fresh napari:", {k: got[k] for k in ("renderer", "detections")})
    assert got["scene_drawn"] and got["renderer"]
    assert got["torch_imports"] == [] and got["torch_loaded"] == []
    assert Path(got["model"]) == tmp_path / "models" / "run-001" / "model.pt"
    assert Path(got["model"]).is_file() and got["detections"] > 0


@pytest.mark.parametrize("kind", ["nope"])
def test_unknown_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValueError):
        Job(kind, {})
