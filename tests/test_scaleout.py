"""The task engine (scale-out): Dask engines, killed tasks, resume after kill -9, shards,
part files, errors; and `infer` run through it.

A fake task runner stands in for the detector here (fast and deterministic): each task emits
a few oriented boxes inside its block of rows plus one box on the seam with the next block,
which the next task emits too (slightly moved, other score) so the merge has duplicates to
remove. The real detector runs through the same engine in the infer tests at the bottom.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import cloudpickle
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from _shapes import rect

from geodetect import detection, engine, inference, tiling
from geodetect.engine import WorkItem, execute, parts_dir, shard_output
from geodetect.errors import InputError
from geodetect.manifest import Manifest, manifest_path, task_key
from geodetect.merge import merge_detections

# workers unpickle the runner: ship this module's functions by value (it is not importable
# in the worker processes)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

X0, Y0 = 500_000.0, 5_000_000.0
BLOCK = 100.0  # metres of rows per task


def fake_detections(payload: dict) -> gpd.GeoDataFrame:
    """Deterministic boxes of one task; logs the call (pid, task) to payload['log']."""
    image, index = payload["image"], payload["index"]
    if payload.get("log"):
        with open(payload["log"], "a") as f:
            f.write(f"{os.getpid()} {image} {index}\n")
    rng = np.random.default_rng(1000 * int(image[5:-4]) + index)
    top = Y0 - index * BLOCK
    rows = []
    for _ in range(3):
        cx, cy = X0 + rng.uniform(10, 190), top - rng.uniform(10, 90)
        rows.append(
            ("vehicle", float(rng.uniform(0.4, 0.99)), (cx, cy, 4.5, 2.0, rng.uniform(0, 180)))
        )
    # the seam box with the previous block: emitted by both tasks
    if index > 0:
        rows.append(("vehicle", 0.61, (X0 + 50, top + 0.5, 4.5, 2.0, 33.0)))
    if index < payload["n"] - 1:
        rows.append(("vehicle", 0.6, (X0 + 50.1, top - BLOCK + 0.5, 4.5, 2.0, 33.5)))
    gdf = gpd.GeoDataFrame(
        {
            "class": [r[0] for r in rows],
            "score": [r[1] for r in rows],
            "angle_deg": [r[2][4] for r in rows],
            "heading_deg": [np.nan] * len(rows),
            "length_m": [r[2][2] for r in rows],
            "width_m": [r[2][3] for r in rows],
            "image": [image] * len(rows),
        },
        geometry=[rect(*r[2]) for r in rows],
        crs="EPSG:32633",
    )
    gdf.attrs["valid_tiles"] = index + 1
    return gdf


def dying_detections(payload: dict) -> gpd.GeoDataFrame:
    """Kills its worker process the first time it runs a task (flag file), then works."""
    flag = Path(payload["flag_dir"]) / f"{payload['image']}.{payload['index']}"
    if payload["index"] == 1 and not flag.exists():
        flag.write_text("died once")
        os._exit(1)
    return fake_detections(payload)


def failing_detections(payload: dict) -> gpd.GeoDataFrame:
    if payload["index"] == 2:
        raise InputError(f"{payload['image']}: unreadable block")
    return fake_detections(payload)


def _items(n_scenes: int = 2, n_tasks: int = 4, **extra) -> list[WorkItem]:
    items = []
    for s in range(n_scenes):
        image = f"scene{s}.tif"
        for i in range(n_tasks):
            payload = {"image": image, "index": i, "n": n_tasks, **extra}
            key = task_key(scene=image, index=i, params={"threshold": 0.3})
            items.append(WorkItem(key, f"{image}\x00{i:06d}", payload, f"{image} [{i}]", 1e6))
    return items


MERGE = partial(merge_detections, nms_iou=0.3)


def _features(path: Path) -> pd.DataFrame:
    gdf = gpd.read_file(path)
    return pd.DataFrame(
        {
            **{c: gdf[c] for c in ["class", "score", "angle_deg", "image"]},
            # corners relative to the first one's grid metre: processes with other thread
            # counts differ in the last float bits, never by a millimetre
            **_corners(gdf),
        }
    )


def _same(a: Path, b: Path) -> None:
    """The same detections: fields to float precision, corners to within a millimetre."""
    fa, fb = _features(a), _features(b)
    mm = [c for c in fa.columns if c.startswith("c") and c != "class"]
    pd.testing.assert_frame_equal(fa[mm], fb[mm], check_exact=False, rtol=0, atol=1.0)
    pd.testing.assert_frame_equal(fa.drop(columns=mm), fb.drop(columns=mm), check_exact=False)


def _corners(gdf: gpd.GeoDataFrame) -> dict[str, np.ndarray]:
    xy = shapely.get_coordinates(gdf.geometry.values).reshape(len(gdf), -1, 2)[:, :4]
    xy = (xy - np.floor(xy[:1, :1])) * 1000.0 if len(gdf) else xy  # mm
    return {
        f"c{i}{a}": xy[:, i, j] if len(gdf) else [] for i in range(4) for j, a in enumerate("xy")
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "det.gpkg"
    res = execute(_items(), fake_detections, out, MERGE)
    assert res.ran == 8 and res.reused == 0
    return out


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_reference_merges_seam_duplicates(reference):
    f = _features(reference)
    # 2 scenes x (4 tasks x 3 boxes + 3 seams, each seen twice and kept once)
    assert len(f) == 2 * (4 * 3 + 3)
    assert f["image"].value_counts().to_dict() == {"scene0.tif": 15, "scene1.tif": 15}
    assert not parts_dir(reference).exists()  # parts and manifest cleaned after the merge
    assert not manifest_path(reference).exists()


def test_two_worker_cluster_equals_one_process(reference, client, tmp_path):
    log = tmp_path / "calls.log"
    out = tmp_path / "det.gpkg"
    res = execute(_items(log=str(log)), fake_detections, out, MERGE, client=client)
    assert res.ran == 8
    _same(out, reference)
    pids = {line.split()[0] for line in log.read_text().splitlines()}
    assert os.getpid() not in {int(p) for p in pids}  # ran on the workers, not here
    assert len(log.read_text().splitlines()) == 8


def test_local_cluster_from_workers_option(reference, tmp_path):
    out = tmp_path / "det.gpkg"
    execute(_items(), fake_detections, out, MERGE, workers=2)
    _same(out, reference)


def test_task_that_kills_its_worker_is_retried(reference, client, tmp_path):
    out = tmp_path / "det.gpkg"
    items = _items(flag_dir=str(tmp_path))
    res = execute(items, dying_detections, out, MERGE, client=client)
    assert sorted(p.name for p in tmp_path.glob("scene*.tif.1")) == ["scene0.tif.1", "scene1.tif.1"]
    assert res.ran == 8
    _same(out, reference)


def test_user_error_in_a_task_is_raised_not_retried(client, tmp_path):
    out = tmp_path / "det.gpkg"
    log = tmp_path / "calls.log"
    with pytest.raises(InputError, match="unreadable block"):
        execute(_items(log=str(log)), failing_detections, out, MERGE, client=client)
    assert not out.exists()
    calls = [line.split()[1:] for line in log.read_text().splitlines()]
    assert len(calls) == len({tuple(c) for c in calls})  # nothing ran twice


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {here!r})
import test_scaleout as t
from geodetect.engine import execute

count = 0
def runner(payload):
    global count
    count += 1
    if count > {k}:
        os.kill(os.getpid(), signal.SIGKILL)
    return t.fake_detections(payload)

execute(t._items(log={log!r}), runner, {out!r}, t.MERGE)
"""


def test_resume_after_kill9_redoes_only_the_rest(reference, tmp_path):
    out, log = tmp_path / "det.gpkg", tmp_path / "calls.log"
    script = _KILLED_RUN.format(here=str(Path(__file__).parent), k=3, log=str(log), out=str(out))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not out.exists()
    assert len(Manifest(manifest_path(out)).read()) == 3
    assert len(list(parts_dir(out).glob("*.gpkg"))) == 3
    before = log.read_text().splitlines()
    res = execute(_items(log=str(log)), fake_detections, out, MERGE, resume=True)
    assert (res.ran, res.reused) == (5, 3)
    after = log.read_text().splitlines()[len(before) :]
    first = {tuple(line.split()[1:]) for line in before[:3]}
    assert not first & {tuple(line.split()[1:]) for line in after}  # done tasks not redone
    _same(out, reference)  # no gaps, no dups


def test_resume_ignores_a_cut_manifest_line_and_changed_params(tmp_path):
    out = tmp_path / "det.gpkg"
    items = _items(n_scenes=1)
    execute(items, fake_detections, out, MERGE, keep_parts=True)
    m = manifest_path(out)
    text = m.read_text()
    m.write_text(text[: len(text) - 20])  # last record cut by a kill mid-write
    res = execute(items, fake_detections, out, MERGE, resume=True, keep_parts=True)
    assert (res.ran, res.reused) == (1, 3)
    # other parameters → other keys: nothing reused
    changed = [
        WorkItem(
            task_key(scene=it.payload["image"], index=it.payload["index"], params={"t": 1}),
            it.sort_key,
            it.payload,
            it.label,
            it.pixels,
        )
        for it in items
    ]
    res = execute(changed, fake_detections, out, MERGE, resume=True)
    assert (res.ran, res.reused) == (4, 0)


def test_without_resume_everything_runs_again(tmp_path):
    out = tmp_path / "det.gpkg"
    execute(_items(n_scenes=1), fake_detections, out, MERGE, keep_parts=True)
    res = execute(_items(n_scenes=1), fake_detections, out, MERGE)
    assert (res.ran, res.reused) == (4, 0)


def test_shards_are_disjoint_complete_and_merge_on_resume(reference, tmp_path):
    out, log = tmp_path / "det.gpkg", tmp_path / "calls.log"
    n = 3
    ran = []
    for i in range(1, n + 1):
        items = _items(log=str(log))[::-1] if i == 2 else _items(log=str(log))  # order-free
        res = execute(items, fake_detections, out, MERGE, shard=f"{i}/{n}")
        ran.append(res.ran)
        assert shard_output(out, (i, n)).exists()
        assert manifest_path(out, (i, n)).exists()
    assert not out.exists()
    calls = [tuple(line.split()[1:]) for line in log.read_text().splitlines()]
    assert len(calls) == 8 and len(set(calls)) == 8  # disjoint and complete
    assert sorted(ran) == [2, 3, 3]
    res = execute(_items(log=str(log)), fake_detections, out, MERGE, resume=True)
    assert (res.ran, res.reused) == (0, 8)  # only merges
    _same(out, reference)
    assert not list(tmp_path.glob("*.manifest.json"))


@pytest.mark.parametrize("spec", ["0/4", "5/4", "1/0", "a/b", "2"])
def test_bad_shard_is_a_clean_error(spec, tmp_path):
    with pytest.raises(InputError, match="--shard"):
        execute(_items(), fake_detections, tmp_path / "d.gpkg", MERGE, shard=spec)


def test_workers_and_scheduler_together_is_an_error(tmp_path):
    with pytest.raises(InputError, match="either"):
        execute(
            _items(),
            fake_detections,
            tmp_path / "d.gpkg",
            MERGE,
            workers=2,
            scheduler="tcp://127.0.0.1:1",
        )


def test_unreachable_scheduler_is_a_clean_error(tmp_path, monkeypatch):
    from geodetect.errors import GeodetectError

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", "2s")

    with pytest.raises(GeodetectError, match="cannot connect"):
        engine.execute(
            _items(n_scenes=1, n_tasks=1),
            fake_detections,
            tmp_path / "d.gpkg",
            MERGE,
            scheduler="tcp://127.0.0.1:9",
        )


def test_in_process_runner_reports_progress_within_tasks(tmp_path, capsys):
    seen = []

    def runner(payload, on_progress=None):
        for _ in range(4):
            on_progress(0.25)
            seen.append(payload["index"])
        return fake_detections(payload)

    execute(_items(n_scenes=1), runner, tmp_path / "d.gpkg", MERGE, progress=True)
    assert seen == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    err = capsys.readouterr().err
    assert "4.0/4.0 Mpx" in err and "tasks 4/4" in err and "Mpx/s" in err


ENGINE_MAY_IMPORT = {"errors", "manifest", "atomic", "labels"}  # DESIGN.md's module map
DETECTION = {
    "detection", "inference", "tiling", "modelinfo", "model", "torchrun", "onnxrun",
    "decoding", "tta", "merge", "north", "aoi", "mosaic", "export", "training",
}  # fmt: skip


def _geodetect_imports(path: Path) -> set[str]:
    """geodetect modules a file imports anywhere (module level and inside functions)."""
    from test_design import _imports as import_sites

    return {module for module, _, _ in import_sites(path)}


def test_the_engine_imports_no_detection_module():
    """A lower module never calls back into a higher one: detection hands the engine its
    runner, merge and check; the engine imports none of detection's modules."""
    imports = _geodetect_imports(Path(engine.__file__))
    assert not imports & DETECTION, sorted(imports & DETECTION)
    assert imports <= ENGINE_MAY_IMPORT, sorted(imports - ENGINE_MAY_IMPORT)


# ------------------------------------------------------------------ the real detector


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from geodetect.data import make_sample_data

    root = tmp_path_factory.mktemp("scaleout_scenes")
    return [
        make_sample_data(root / f"s{i}", size=256, seed=40 + i, cloud=False, name=f"s{i}")
        for i in range(3)
    ]


@pytest.fixture(scope="module")
def tiny_model(trained_model):
    """The session's trained model (conftest)."""
    return trained_model


@pytest.fixture(scope="module")
def one_process(tiny_model, scenes, tmp_path_factory) -> Path:
    from geodetect.inference import infer

    out = tmp_path_factory.mktemp("scaleout_one") / "det.gpkg"
    infer(tiny_model, [s.image for s in scenes], out=out, device="cpu")
    assert len(gpd.read_file(out)) > 0  # equality below must compare something
    return out


def test_infer_on_two_workers_equals_one_process(tiny_model, scenes, one_process, tmp_path):
    from geodetect.cli import main

    out = tmp_path / "det.gpkg"
    pattern = str(Path(scenes[0].image).parent.parent / "s*" / "*.tif")
    assert main(["infer", str(tiny_model), pattern, "--workers", "2", "--out", str(out)]) == 0
    _same(out, one_process)
    assert not parts_dir(out).exists()


def test_each_worker_loads_the_model_once(tiny_model, scenes, client, tmp_path):
    det = detection.load_detector(tiny_model, "cpu")
    settings = tiling.resolve_settings(det.info)
    tasks = tiling.plan_tasks([s.image for s in scenes] * 1, None, det.info, settings)
    client.run(lambda: detection.LOADS.update(count=0))
    inference.run_inference(
        tasks,
        det,
        settings,
        model=tiny_model,
        out=tmp_path / "d.gpkg",
        device="cpu",
        client=client,
    )
    loads = client.run(lambda: detection.LOADS["count"])
    assert sorted(loads.values()) in ([0, 1], [1, 1])  # at most once per worker process


def test_shards_then_resume_equal_one_process(tiny_model, scenes, one_process, tmp_path):
    from geodetect.inference import infer

    out = tmp_path / "det.gpkg"
    images = [s.image for s in scenes]
    first = infer(tiny_model, images, out=out, device="cpu", shard="1/2")
    assert first.name == "det.shard-1-of-2.gpkg" and not out.exists()
    n_parts = len(list(parts_dir(out).glob("*.gpkg")))
    assert n_parts == 2  # 3 scenes, one task each, round-robin
    infer(tiny_model, images, out=out, device="cpu", resume=True)
    _same(out, one_process)


def test_inference_keys_follow_model_scene_and_params(tiny_model, scenes, tmp_path):
    import dataclasses
    import shutil

    from geodetect.manifest import file_sha256

    det = detection.load_detector(tiny_model, "cpu")
    settings = tiling.resolve_settings(det.info)
    scene = tmp_path / "scene.tif"
    shutil.copy(scenes[1].image, scene)
    tasks = tiling.plan_tasks([str(scene)], None, det.info, settings)
    h = file_sha256(tiny_model)
    keys = [it.key for it in inference.infer_items(tasks, h, settings)]
    assert [it.key for it in inference.infer_items(tasks, h, settings)] == keys
    faster = dataclasses.replace(settings, batch_size=settings.batch_size + 3)
    assert [it.key for it in inference.infer_items(tasks, h, faster)] == keys
    other = dataclasses.replace(settings, threshold=settings.threshold + 0.1)
    assert not set(it.key for it in inference.infer_items(tasks, h, other)) & set(keys)
    assert not set(it.key for it in inference.infer_items(tasks, "0" * 64, settings)) & set(keys)
    os.utime(scene, ns=(0, 10**18))  # the scene changed on disk
    assert not set(it.key for it in inference.infer_items(tasks, h, settings)) & set(keys)


# ------------------------------------------------------------------ issue 14: addresses, paths


@pytest.mark.parametrize("address", ["localhost", "http://head:8786", "tcp://head", "head:0"])
def test_bad_scheduler_address_fails_before_any_work(address, tmp_path, capsys):
    """Checked before the manifest is reset: no `det.gpkg.parts/` left behind."""
    from _painted import grid
    from test_bad_inputs import write_model

    from geodetect.cli import main
    from geodetect.geotiff import write_raster

    out = tmp_path / "det.gpkg"
    model = write_model(tmp_path / "m.pt")
    scene = write_raster(tmp_path / "a.tif", np.ones((3, 64, 64), np.uint8), grid(64))
    before = sorted(tmp_path.iterdir())
    argv = ["infer", str(model), str(scene), "--scheduler", address, "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a scheduler address" in err[0]
    assert sorted(tmp_path.iterdir()) == before


def test_remote_workers_get_absolute_paths(tmp_path, monkeypatch):
    """A worker on another host has another working folder: relative scene paths from the
    command line must reach it absolute."""
    from _painted import grid
    from test_bad_inputs import write_model

    from geodetect.geotiff import write_raster

    monkeypatch.chdir(tmp_path)
    write_raster("scene.tif", np.ones((3, 64, 64), np.uint8), grid(64))
    det = detection.load_detector(write_model(tmp_path / "m.pt"), "cpu")
    settings = tiling.resolve_settings(det.info)
    tasks = tiling.plan_tasks(["scene.tif"], None, det.info, settings)
    sent = []

    def fake_execute(items, runner, out, merge, **kw):
        sent.extend(it.payload for it in items)
        return engine.RunResult(Path(out), [], 0, 0)

    monkeypatch.setattr(inference, "execute", fake_execute)
    inference.run_inference(tasks, det, settings, model="m.pt", out="det.gpkg", client=object())
    assert sent and all(Path(t.image).is_absolute() for t in sent)
    assert sent[0].image == str(tmp_path / "scene.tif")
