"""A corpus of bad inputs through the CLI in-process (`cli.main(argv)`), as users pass them.

Every case must: exit non-zero, print exactly one `error: …` line on stderr and no traceback,
leave no output (not even a temp file), and leave every input byte-for-byte as it was.
Issue 14's data-loss cases (an output that is an input) are part of the corpus.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from _painted import write_scene
from affine import Affine
from test_pointcloud import UTM33, X0, Y0, random_cloud, write_las

from geodetect.cli import main
from geodetect.config import Config, dump_config
from geodetect.geotiff import write_raster
from geodetect.labels import read_vector, write_vector
from geodetect.model import build_model, make_arch, model_blob
from geodetect.raster import Grid

CARS = np.array(
    [
        [60.0, 60.0, 24.0, 10.0, 30.0],
        [190.0, 70.0, 24.0, 10.0, 120.0],
        [70.0, 190.0, 24.0, 10.0, 75.0],
        [180.0, 180.0, 24.0, 10.0, 160.0],
    ]
)
HEADS = np.array([30.0, 300.0, 75.0, 340.0])
NEG = [shapely.box(95, 95, 160, 160), shapely.box(0, 230, 100, 256)]


def write_model(path: Path, classes: tuple[str, ...] = ("car",)) -> Path:
    """An untrained but well-formed geodetect model file (no training needed to fail)."""
    cfg = Config.model_validate({"model": {"width": 8}})
    arch = make_arch(3, len(classes), cfg.model)
    meta = {
        "classes": list(classes),
        "has_front": [True] * len(classes),
        "bands": [1, 2, 3],
        "elevation": False,
        "gsd": 0.25,
        "normalisation": {
            "method": "percentile",
            "stats": "scene",
            "percentiles": [2.0, 98.0],
            "model_stats": {},
            "elevation_scale": 10.0,
        },
        "config": dump_config(cfg),
        "arch": arch,
        "metrics": {},
    }
    torch.save(model_blob(build_model(arch), meta), path)
    return path


def lying_header(path: Path, shift: float = 1e5) -> Path:
    """Move the header's x/y bounds by `shift` (a writer that never updated them)."""
    raw = bytearray(path.read_bytes())
    max_x, min_x, max_y, min_y = struct.unpack_from("<4d", raw, 179)
    struct.pack_into("<4d", raw, 179, max_x + shift, min_x + shift, max_y + shift, min_y + shift)
    path.write_bytes(bytes(raw))
    return path


def _labels_with(src: Path, dst: Path, row: int, geom) -> Path:
    gdf = read_vector(src)
    geoms = gdf.geometry.to_numpy().copy()
    geoms[row] = geom
    gdf = gdf.set_geometry(geoms)
    return write_vector(gdf, dst)


def _links(d: Path) -> None:
    os.symlink(d / "c.las", d / "link.las")
    os.link(d / "scene.tif", d / "hard.tif")
    os.symlink(d / "scene_labels.gpkg", d / "link_truth.gpkg")
    os.link(d / "model.pt", d / "hard_model.onnx")  # export's --out, the model under it
    os.link(d / "scene.tif", d / "hard_scene.onnx")  # ... or a --calibrate scene


_LINKS = ("link.las", "hard.tif", "link_truth.gpkg", "hard_model.onnx", "hard_scene.onnx")


@pytest.fixture
def data(template: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A fresh copy per case: a case that damages an input cannot hide another's failure."""
    d = tmp_path / "data"
    shutil.copytree(template["dir"], d, ignore=shutil.ignore_patterns(*_LINKS))
    _links(d)
    for text in [*d.glob("*.yaml"), d / "scenes.gpkg"]:  # paths inside files: to the copy
        raw = text.read_text(errors="surrogateescape")  # latin1.yaml stays latin-1
        text.write_text(raw.replace(str(template["dir"]), str(d)), errors="surrogateescape")
    return {k: d / v.relative_to(template["dir"]) for k, v in template.items()}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_inputs")
    scene, labels = write_scene(d, CARS, HEADS, NEG)
    x, y, z, cls = random_cloud(2000)
    cloud = write_las(d / "cloud.laz", x, y, z, cls, "1.4", 6)
    las = write_las(d / "c.las", x, y, z, cls)
    near = Grid(UTM33, Affine(0.5, 0, X0, 0, -0.5, Y0 + 16), 40, 32)
    near_scene = write_raster(d / "near.tif", np.ones((3, 32, 40), np.uint8), near)
    nocrs = write_raster(
        d / "nocrs.tif",
        np.full((3, 128, 128), 90, np.uint8),
        Grid(None, Affine.identity(), 128, 128),
    )
    pred = write_vector(read_vector(labels), d / "pred.gpkg")
    model = write_model(d / "model.pt")
    corners = shapely.get_coordinates(read_vector(labels).geometry.iloc[0])[:4]
    bowtie = shapely.Polygon(corners[[0, 2, 1, 3]])
    nan_neg = shapely.Polygon([(0, 0), (1, np.nan), (1, 1), (0, 1)])
    files = {
        "scene": scene,
        "labels": labels,
        "cloud": cloud,
        "las": las,
        "near": near_scene,
        "nocrs": nocrs,
        "pred": pred,
        "model": model,
        "bowtie": _labels_with(labels, d / "bowtie.gpkg", 0, bowtie),
        "nan_neg": _labels_with(labels, d / "nan_neg.gpkg", len(CARS), nan_neg),
        "zero": d / "zero.tif",
        "junk_model": d / "junk.pt",
        "cut_laz": d / "cut.laz",
        "empty_labels": d / "empty.gpkg",
        "folder_out": d / "existing.gpkg",
        "folder_tif": d / "existing.tif",
        "samples_here": d,
    }
    files["zero"].write_bytes(b"")
    files["junk_model"].write_bytes(b"PK\x03\x04 not a model")
    files["cut_laz"].write_bytes(cloud.read_bytes()[: cloud.stat().st_size // 2])
    files["empty_labels"].write_bytes(b"")
    files["folder_out"].mkdir()
    files["folder_tif"].mkdir()
    (d / "existing.onnx").mkdir()
    (d / "region.gpkg").write_bytes(labels.read_bytes())
    _links(d)
    (d / "scenes.gpkg").write_text(f"{scene}\n")  # a list of scenes, oddly named
    (d / "chips").mkdir()  # a scene kept where samples would replace its chips
    (d / "chips" / "scene.tif").write_bytes(scene.read_bytes())
    parts = d / "det.gpkg.parts"
    parts.mkdir()
    write_raster(parts / "inside.tif", np.ones((3, 32, 40), np.uint8), near)
    configs = {
        "pct_reversed": "data:\n  percentiles: [98, 2]\n",
        "pct_range": "data:\n  percentiles: [-5, 200]\n",
        "chip_zero": "data:\n  chip_size: 0\n",
        "bands_zero": "data:\n  bands: [0]\n",
        "bands_twice": "data:\n  bands: [1, 1]\n",
        "batch_zero": "train:\n  batch_size: 0\n",
        "val_one": "train:\n  val_fraction: 1.0\n",
        "neg_one": "train:\n  negative_fraction: 1.5\n",
        "lr_nan": "train:\n  lr: .nan\n",
        "lr_inf": "train:\n  lr: .inf\n",
        "workers_neg": "train:\n  workers: -1\n",
        "tile_small": "infer:\n  tile: 8\n",
        "misspelt": "train:\n  epoch: 3\n",
        "section_scalar": "train: 5\n",
        "a_list": "- 1\n- 2\n",
        "pretrained_out": f"model:\n  width: 8\n  pretrained: {d / 'run' / 'model.pt'}\n"
        "train:\n  epochs: 1\n  chips_per_epoch: 8\n  batch_size: 8\n",
        "resnet": "model:\n  backbone: resnet18\n",
        "tiny_pretrain": "data:\n  chip_size: 64\nmodel:\n  width: 8\n"
        "pretrain:\n  epochs: 1\n  chips_per_epoch: 4\n  batch_size: 2\n",
        "tiny": "data:\n  chip_size: 64\nmodel:\n  width: 8\n"
        "train:\n  epochs: 1\n  chips_per_epoch: 8\n  batch_size: 8\n",
    }
    for name, text in configs.items():
        (d / f"{name}.yaml").write_text(text)
    (d / "latin1.yaml").write_bytes("train:\n  lr: 0.001  # \u00e9t\u00e9\n".encode("latin-1"))
    (d / "run").mkdir()
    (d / "run" / "model.pt").write_bytes(model.read_bytes())
    return {k: Path(v) for k, v in files.items()} | {"dir": d}


# {name} stands for a file of the `data` fixture (or {d}: its folder, {o}: a fresh folder)
TEMPLATES = {
    # 1-2: an output that is an input (issue 14: data loss)
    "rasterize over its LAS": "rasterize {las} --resolution 1 --out {las}",
    "rasterize over --like scene": "rasterize {cloud} --like {near} --out {near}",
    "rasterize over LAS via symlink": "rasterize {d}/link.las --resolution 1 --out {las}",
    "rasterize over scene via hard link": "rasterize {cloud} --like {d}/hard.tif --out {scene}",
    "evaluate --errors over truth": "evaluate {pred} {labels} --errors {labels}",
    "evaluate --errors over pred": "evaluate {pred} {labels} --errors {pred}",
    "evaluate --errors over truth via link":
        "evaluate {pred} {d}/link_truth.gpkg --errors {labels}",
    "infer scene inside the parts folder":
        "infer {model} {d}/det.gpkg.parts/inside.tif --out {d}/det.gpkg",
    "infer --out over --from-list":
        "infer {model} --from-list {d}/scenes.gpkg --out {d}/scenes.gpkg",
    "samples over its own scene in chips/":
        "samples {d}/chips/scene.tif --labels {labels} --out {d}",
    "samples --out is a file": "samples {scene} --labels {labels} --out {labels}",
    "train over its pretrained weights":
        "train {scene} --labels {labels} --config {d}/pretrained_out.yaml --out {d}/run",
    # 3: a CRS-less scene mixed with a georeferenced one
    "infer CRS-less with georeferenced": "infer {model} {scene} {nocrs} --out {o}/det.gpkg",
    # 4: config ranges (and the like)
    **{
        f"config {n}": "samples {scene} --labels {labels} --config {d}/" + n + ".yaml --out {o}/s"
        for n in (
            "pct_reversed", "pct_range", "chip_zero", "bands_zero", "bands_twice", "batch_zero",
            "val_one", "neg_one", "lr_nan", "lr_inf", "workers_neg", "tile_small", "misspelt",
            "section_scalar", "latin1", "a_list", "nope",
        )
    },  # fmt: skip
    "train --epochs 0": "train {scene} --labels {labels} --epochs 0 --out {o}/r",
    # 5: a cloud that misses the scene
    "rasterize cloud off the scene": "rasterize {cloud} --like {scene} --out {o}/dem.tif",
    # 7: invalid polygons
    "train bow-tie positive": "train {scene} --labels {bowtie} --config {d}/tiny.yaml --out {o}/r",
    "samples NaN-vertex negative": "samples {scene} --labels {nan_neg} --out {o}/s",
    # 8: scheduler addresses
    "scheduler without port": "infer {model} {scene} --scheduler localhost --out {o}/det.gpkg",
    "scheduler http address": "infer {model} {scene} --scheduler http://h:8786 --out {o}/det.gpkg",
    "scheduler port out of range":
        "infer {model} {scene} --scheduler tcp://h:99999 --out {o}/det.gpkg",
    # 9: a folder as --out; a config section that is not a mapping
    "infer --out is a folder": "infer {model} {scene} --out {d}/existing.gpkg",
    "rasterize --out is a folder": "rasterize {cloud} --resolution 1 --out {d}/existing.tif",
    "evaluate --errors is a folder": "evaluate {pred} {labels} --errors {d}/existing.gpkg",
    "config section is a number":
        "train {scene} --labels {labels} --config {d}/section_scalar.yaml --epochs 2 --out {o}/r",
    # files from the wild, and options that make no sense
    "scene zero bytes": "infer {model} {zero} --out {o}/det.gpkg",
    "scene missing": "samples {d}/nope.tif --labels {labels} --out {o}/s",
    "labels missing": "samples {scene} --labels {d}/nope.gpkg --out {o}/s",
    "labels zero bytes": "samples {scene} --labels {empty_labels} --out {o}/s",
    "model not ours": "infer {junk_model} {scene} --out {o}/det.gpkg",
    "model missing": "infer {d}/nope.pt {scene} --out {o}/det.gpkg",
    "infer unknown format": "infer {model} {scene} --out {o}/det.xyz",
    "infer overlap >= half tile": "infer {model} {scene} --tile 128 --overlap 64 --out {o}/d.gpkg",
    "infer bad shard": "infer {model} {scene} --shard 3/2 --out {o}/det.gpkg",
    "infer device not understood": "infer {model} {scene} --device tpu --out {o}/det.gpkg",
    "infer glob matches nothing": "infer {model} {d}/*.nothing --out {o}/det.gpkg",
    "infer --from-list missing": "infer {model} --from-list {d}/nope.txt --out {o}/det.gpkg",
    "infer out folder missing": "infer {model} {scene} --out {o}/no/det.gpkg",
    "rasterize truncated LAZ": "rasterize {cut_laz} --resolution 1 --out {o}/dem.tif",
    "rasterize resolution zero": "rasterize {cloud} --resolution 0 --out {o}/dem.tif",
    "rasterize corrupt --like": "rasterize {cloud} --like {zero} --out {o}/dem.tif",
    "evaluate --iou 2": "evaluate {pred} {labels} --iou 2",
    "evaluate --errors not gpkg": "evaluate {pred} {labels} --errors {o}/e.shp",
    "evaluate pred missing": "evaluate {d}/nope.gpkg {labels}",
    "train pointclouds miscounted": "train {scene} --labels {labels} --pointcloud {cloud} {cloud} "
    "--config {d}/tiny.yaml --out {o}/r",
    "train --extend without --resume":
        "train {scene} --labels {labels} --extend --config {d}/tiny.yaml --out {o}/r",
    # the other inputs a command reads: --init, --aoi, --region
    "train over its --init model": "train {scene} --labels {labels} --init {d}/run/model.pt "
    "--config {d}/tiny.yaml --out {d}/run",
    "infer --out over --aoi": "infer {model} {scene} --aoi {labels} --out {labels}",
    "evaluate --errors over --region":
        "evaluate {pred} {labels} --region {d}/region.gpkg --errors {d}/region.gpkg",
    # convert
    "convert over its source": "convert {labels} {labels}",
    "convert over its source via symlink": "convert {d}/link_truth.gpkg {labels}",
    "convert over --image scene via hard link": "convert {labels} {d}/hard.tif --image {scene}",
    "convert source missing": "convert {d}/nope.gpkg {o}/x.json",
    "convert source zero bytes": "convert {empty_labels} {o}/x.json",
    "convert CRS file without --image": "convert {labels} {o}/x.txt",
    "convert --image zero bytes": "convert {labels} {o}/x.json --image {zero}",
    "convert out folder missing": "convert {labels} {o}/no/x.json --image {scene}",
    "convert OUT is a folder": "convert {labels} {d}/existing.gpkg",
    # export
    "export over the model via hard link": "export {model} --out {d}/hard_model.onnx",
    "export over a --calibrate scene via hard link":
        "export {model} --int8 --calibrate {scene} --out {d}/hard_scene.onnx",
    "export --out not .onnx": "export {model} --out {o}/m.pt",
    "export --out is a folder": "export {model} --out {d}/existing.onnx",
    "export out folder missing": "export {model} --out {o}/no/m.onnx",
    "export --int8 without --calibrate": "export {model} --int8 --out {o}/m.onnx",
    "export model missing": "export {d}/nope.pt --out {o}/m.onnx",
    "export model not ours": "export {junk_model} --out {o}/m.onnx",
    "export --calibrate zero bytes": "export {model} --int8 --calibrate {zero} --out {o}/m.onnx",
    # pretrain
    "pretrain over its scene":
        "pretrain {scene} --config {d}/tiny_pretrain.yaml --out {scene}",
    "pretrain over its scene via hard link":
        "pretrain {d}/hard.tif --config {d}/tiny_pretrain.yaml --out {scene}",
    "pretrain scene missing": "pretrain {d}/nope.tif --out {o}/b.pt",
    "pretrain scene zero bytes": "pretrain {zero} --out {o}/b.pt",
    "pretrain --epochs 0": "pretrain {scene} --epochs 0 --out {o}/b.pt",
    "pretrain a torchvision backbone": "pretrain {scene} --config {d}/resnet.yaml --out {o}/b.pt",
    "pretrain config out of range":
        "pretrain {scene} --config {d}/pct_reversed.yaml --out {o}/b.pt",
    "pretrain device not understood": "pretrain {scene} --device tpu --out {o}/b.pt",
    "pretrain out folder missing": "pretrain {scene} --out {o}/no/b.pt",
    "pretrain --out is a folder": "pretrain {scene} --out {d}/existing.gpkg",
}  # fmt: skip


def _argv(case: str, files: dict[str, Path], out: Path) -> list[str]:
    names = {k: str(v) for k, v in files.items()} | {"d": str(files["dir"]), "o": str(out)}
    return TEMPLATES[case].format(**names).split()


CASES = sorted(TEMPLATES)


def _snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and a marker for every folder) under the roots, links followed."""
    seen: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            key = str(p)
            if p.is_symlink():
                seen[key] = "link:" + os.readlink(p)
            elif p.is_dir():
                seen[key] = "dir"
            else:
                seen[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return seen


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: str, data: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = _argv(case, data, out)
    before = _snapshot(tmp_path)
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status != 0, f"{case}: exit 0"
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert _snapshot(tmp_path) == before  # inputs intact, nothing left behind
