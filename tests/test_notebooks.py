"""The notebooks: each .ipynb holds the cells of its jupytext script, public API only, and
they run top to bottom.

notebooks/<name>.py (jupytext percent format, linted by ruff) and notebooks/<name>.ipynb are
a pair (`formats: ipynb,py:percent`): edit either, then `jupytext --sync notebooks/<name>.py`
(Jupyter with jupytext installed saves both). Outputs and cell ids in the .ipynb are not
compared, so a notebook saved from Jupyter after a run stays in sync.
"""

from __future__ import annotations

import ast
import difflib
import os
import shutil
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

import geodetect

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["quickstart", "lidar_fusion"]
PAIRING = "ipynb,py:percent"


def _cells(path: Path) -> list[tuple[str, str, list[str]]]:
    """(type, source, tags) of each cell, as jupytext reads the file."""
    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


def _differences(script: Path, notebook: Path) -> list[str]:
    """Why `notebook` does not hold the cells of `script` (empty: in sync)."""
    problems = [
        f"{p.name}: jupytext formats is {f!r}, not {PAIRING!r}"
        for p in (script, notebook)
        if (f := jupytext.read(p).metadata.get("jupytext", {}).get("formats")) != PAIRING
    ]
    want, have = _cells(script), _cells(notebook)
    if len(want) != len(have):
        problems.append(f"{script.name} has {len(want)} cells, {notebook.name} {len(have)}")
    for i, (w, h) in enumerate(zip(want, have, strict=False)):
        if w != h:
            diff = difflib.unified_diff(
                h[1].splitlines(), w[1].splitlines(), notebook.name, script.name, lineterm=""
            )
            problems.append(f"cell {i} ({w[0]}, tags {w[2]} vs {h[2]}):\n" + "\n".join(diff))
            break  # the first difference is enough to find the edit
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_notebook_holds_the_cells_of_its_script(name):
    problems = _differences(NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb")
    assert not problems, (
        f"run `jupytext --sync notebooks/{name}.py` (or save it from Jupyter with jupytext): "
        + "\n".join(problems)
    )


def test_sync_check_ignores_outputs_and_catches_edits(tmp_path):
    """A notebook saved after a run (outputs, counts, new ids) passes; an edited cell fails."""
    shutil.copy(NOTEBOOKS / "quickstart.py", tmp_path / "quickstart.py")
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.execution_count = 1
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
    code.id = "saved-by-jupyter"
    nbformat.write(nb, tmp_path / "quickstart.ipynb")
    assert _differences(tmp_path / "quickstart.py", tmp_path / "quickstart.ipynb") == []

    code.source += "\nprint('edited in Jupyter only')"
    nbformat.write(nb, tmp_path / "quickstart.ipynb")
    problems = _differences(tmp_path / "quickstart.py", tmp_path / "quickstart.ipynb")
    assert len(problems) == 1 and "edited in Jupyter only" in problems[0]


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_picks_quick_settings(name):
    params = [c for c in _cells(NOTEBOOKS / f"{name}.py") if "parameters" in c[2]]
    assert len(params) == 1
    assert 'os.environ.get("GEODETECT_NOTEBOOK_QUICK") == "1"' in params[0][1]


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_use_only_the_public_api(name):
    """`from geodetect import <public name>` only: no private modules, no copied internals."""
    for kind, source, _ in _cells(NOTEBOOKS / f"{name}.py"):
        if kind != "code":
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geodetect"):
                assert node.module == "geodetect", f"{name}: from {node.module} import …"
                for alias in node.names:
                    assert alias.name in geodetect.__all__, f"{name}: {alias.name} is not public"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("geodetect.") for a in node.names), name


@pytest.mark.parametrize("name", NAMES)
def test_shared_helpers_are_imported_not_pasted(name):
    """The plotting helpers live once, in notebooks/_plots.py."""
    helpers = {
        n.name
        for n in ast.parse((NOTEBOOKS / "_plots.py").read_text()).body
        if isinstance(n, ast.FunctionDef)
    }
    defined = {
        n.name
        for kind, source, _ in _cells(NOTEBOOKS / f"{name}.py")
        if kind == "code"
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef)
    }
    assert not defined & helpers, f"{name}: import {sorted(defined & helpers)} from _plots"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    """Every cell runs on tiny settings, in a scratch folder, with a non-GUI matplotlib."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("GEODETECT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("GEODETECT_CONFIGS", str(ROOT / "configs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    # The kernel runs in tmp_path, not notebooks/: put _plots on its path.
    path = [str(NOTEBOOKS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
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
    if name == "quickstart":
        assert (tmp_path / "quickstart_out" / "detections.png").stat().st_size > 0
        assert (tmp_path / "quickstart_out" / "errors.gpkg").exists()
