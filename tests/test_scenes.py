"""scenes: IMAGE arguments (paths, globs) and --from-list files as scene paths."""

from __future__ import annotations

import pytest

from geodetect.errors import InputError
from geodetect.scenes import expand_images


def test_expand_images_globs_lists_and_errors(tmp_path, monkeypatch):
    for name in ["a.tif", "b.tif", "c.png"]:
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    lst = tmp_path / "scenes.txt"
    lst.write_text("# county\nc.png\n\n  a.tif  \n")
    assert expand_images(["*.tif"]) == ["a.tif", "b.tif"]
    assert expand_images(["b.tif", "*.tif"], lst) == ["b.tif", "a.tif", "c.png"]
    assert expand_images(["missing.tif"]) == ["missing.tif"]  # the raster reader reports it
    with pytest.raises(InputError, match="no file matches"):
        expand_images(["*.jp2"])
    with pytest.raises(InputError, match="--from-list"):
        expand_images([], tmp_path / "nope.txt")
    with pytest.raises(InputError, match="no scenes"):
        expand_images([])


def test_the_cli_globs_without_the_engine():
    """Expanding IMAGE arguments is no reason to import the task engine (or Dask)."""
    import subprocess
    import sys

    code = (
        "import sys; from geodetect.scenes import expand_images; "
        "print(sorted(m for m in ('geodetect.engine', 'distributed') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
