"""The notebooks: in sync with notebooks/_build.py, public API only, and they run top to bottom."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import geodetect

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["quickstart.ipynb", "lidar_fusion.ipynb"]


def _code_cells(name: str) -> list[str]:
    nb = json.loads((NOTEBOOKS / name).read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebooks_match_their_generator():
    """Edit notebooks/_build.py, then run it: the committed .ipynb files are its output."""
    out = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "_build.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_stripped(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_picks_quick_settings(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    assert 'os.environ.get("GEODETECT_NOTEBOOK_QUICK") == "1"' in "".join(params[0]["source"])


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_use_only_the_public_api(name):
    """`from geodetect import <public name>` only: no private modules, no copied internals."""
    for source in _code_cells(name):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geodetect"):
                assert node.module == "geodetect", f"{name}: from {node.module} import …"
                for alias in node.names:
                    assert alias.name in geodetect.__all__, f"{name}: {alias.name} is not public"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("geodetect.") for a in node.names), name


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    """Every cell runs on tiny settings, in a scratch folder, with a non-GUI matplotlib."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("GEODETECT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("GEODETECT_CONFIGS", str(ROOT / "configs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    t0 = time.perf_counter()
    client.execute()
    print(f"{name}: {time.perf_counter() - t0:.0f} s")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if name == "quickstart.ipynb":
        assert (tmp_path / "quickstart_out" / "detections.png").stat().st_size > 0
        assert (tmp_path / "quickstart_out" / "errors.gpkg").exists()
