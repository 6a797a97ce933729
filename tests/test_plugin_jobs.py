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
print(json.dumps({m: m in sys.modules for m in ("torch", "torch._dynamo")}))
"""


def test_the_gui_process_never_imports_torch(tmp_path: Path, sample_small) -> None:
    """Issue 12.1/12.2: torch._dynamo (LLVM) in napari's process segfaulted under Mesa;
    the dock's process runs a real train and detect and still has no torch."""
    params = {
        "image": str(sample_small.image),
        "labels": str(sample_small.labels),
        "out": str(tmp_path / "run"),
        "det": str(tmp_path / "det.gpkg"),
        "tiny": TINY,
    }
    run = subprocess.run(
        [sys.executable, "-c", _GUI_SIDE, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    mods = json.loads(run.stdout.strip().splitlines()[-1])
    assert mods == {"torch": False, "torch._dynamo": False}
    det = gpd.read_file(tmp_path / "det.gpkg")
    assert det.crs.to_epsg() == 32633 and len(det) > 0


@pytest.mark.parametrize("kind", ["nope"])
def test_unknown_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValueError):
        Job(kind, {})
