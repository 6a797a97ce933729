"""atomic: the overwrite guard every writing command calls, and durable atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geodetect import atomic
from geodetect.atomic import atomic_path, check_not_input, check_out_dir
from geodetect.errors import InputError


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "in").mkdir()
    scene = tmp_path / "in" / "scene.tif"
    scene.write_bytes(b"scene")
    os.symlink(scene, tmp_path / "link.tif")
    os.link(scene, tmp_path / "hard.tif")
    return {"scene": scene, "dir": tmp_path / "in", "root": tmp_path}


@pytest.mark.parametrize(
    "out, inputs",
    [
        ("in/scene.tif", ["in/scene.tif"]),  # same path
        ("in/../in/scene.tif", ["in/scene.tif"]),  # same path, spelt otherwise
        ("link.tif", ["in/scene.tif"]),  # the input through a symbolic link
        ("in/scene.tif", ["link.tif"]),  # an input given through a link
        ("hard.tif", ["in/scene.tif"]),  # a hard link: same inode
        ("in/dem.tif", ["in"]),  # inside an input folder
        ("in/sub/dem.tif", ["in"]),
    ],
)
def test_an_output_that_is_an_input_is_refused(files, out, inputs, monkeypatch) -> None:
    monkeypatch.chdir(files["root"])
    with pytest.raises(InputError, match=r"would overwrite the input"):
        check_not_input(out, inputs)


def test_an_input_inside_an_output_folder_is_refused(files, monkeypatch) -> None:
    monkeypatch.chdir(files["root"])
    with pytest.raises(InputError, match="inside this output folder"):
        check_not_input("in/samples.csv", ["in/scene.tif"], folders=["in"])
    with pytest.raises(InputError, match="inside this output folder"):
        check_not_input("x", ["in/scene.tif"], folders=["."])


def test_other_paths_urls_and_none_pass(files, monkeypatch) -> None:
    monkeypatch.chdir(files["root"])
    check_not_input("dem.tif", ["in/scene.tif", None, "/vsicurl/https://x/scene.tif"])
    check_not_input("/vsimem/x.tif", ["/vsimem/x.tif"])  # virtual paths are never compared
    check_not_input("in2/dem.tif", ["in"])  # a sibling folder with a common prefix
    check_not_input("out", ["in/scene.tif"], folders=["out"])


def test_out_naming_a_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        check_out_dir(tmp_path)


def test_atomic_write_fsyncs_the_file_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    """A rename is durable only when the data reached the disk first (the manifest does so)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("data")
    assert events[:2] == ["fsync", "rename"]
    assert (tmp_path / "out.txt").read_text() == "data"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_raster_writer_interrupted_keeps_the_previous_dem(tmp_path: Path) -> None:
    """RELIABILITY 4 for rasters: Ctrl-C half-way through a DEM keeps the old one whole."""
    import numpy as np
    from affine import Affine
    from rasterio.windows import Window

    from geodetect.geotiff import raster_writer, write_raster
    from geodetect.raster import Grid

    grid = Grid(None, Affine.identity(), 64, 64)
    target = write_raster(tmp_path / "dem.tif", np.ones((64, 64), np.float32), grid)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt), raster_writer(target, grid, 1, "float32") as dst:
        dst.write(np.zeros((1, 32, 64), np.float32), window=Window(0, 0, 64, 32))
        raise KeyboardInterrupt
    assert target.read_bytes() == before and _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt), raster_writer(tmp_path / "new.tif", grid, 1, "f4"):
        raise KeyboardInterrupt
    assert not (tmp_path / "new.tif").exists() and _leftovers(tmp_path) == []


def test_model_save_interrupted_keeps_the_previous_model(tmp_path: Path, monkeypatch) -> None:
    """RELIABILITY 4 for model files: torch.save cut short leaves the last model.pt whole."""
    import importlib

    import torch

    train_module = importlib.import_module("geodetect.training")
    target = tmp_path / "model.pt"
    train_module._save({"a": torch.ones(3)}, target)
    before = target.read_bytes()
    real = torch.save

    def save_then_die(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module._save({"a": torch.zeros(3)}, target)
    assert target.read_bytes() == before and _leftovers(tmp_path) == []
