"""The public API: `from geodetect import …` resolves every documented name, lazily."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest

import geodetect

ROOT = Path(__file__).resolve().parents[1]
API_NAMES = [n for n in geodetect.__all__ if n != "__version__"]
REQUIRED = {
    "train", "infer", "evaluate", "precision_recall_curves", "write_samples", "load_model",
    "rasterize_cloud", "rasterize_file", "make_pair", "labels_for_grid", "read_labels",
    "Config", "load_config",
}  # fmt: skip


def _module_of(name: str) -> str:
    return f"geodetect.{geodetect._API[name]}"


def test_required_names_are_public():
    assert REQUIRED <= set(API_NAMES)


@pytest.mark.parametrize("name", API_NAMES)
def test_name_resolves_with_docstring_and_hints(name):
    obj = getattr(geodetect, name)
    assert obj is getattr(importlib.import_module(_module_of(name)), name)
    assert inspect.getdoc(obj), f"geodetect.{name} has no docstring"
    if inspect.isfunction(obj):
        sig = inspect.signature(obj)
        assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return hint"
        untyped = [
            p.name
            for p in sig.parameters.values()
            if p.annotation is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        assert not untyped, f"{name}: parameters without type hints: {untyped}"


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("train", "training"),
        ("infer", "inference"),
        ("evaluate", "evaluation"),
        ("pretrain", "pretraining"),
    ],
)
def test_no_function_shadows_a_module(name, module):
    """A module and a function never share a name: `geodetect.train` is the function, its
    module `geodetect.training` imports as itself, and no `geodetect.train` module exists."""
    mod = importlib.import_module(f"geodetect.{module}")
    import geodetect

    assert inspect.isfunction(getattr(geodetect, name))
    assert getattr(geodetect, name) is getattr(mod, name)
    assert importlib.util.find_spec(f"geodetect.{name}") is None
    assert type(geodetect) is types.ModuleType  # no module-class trick keeps names apart


def test_import_is_cheap():
    """`import geodetect` loads neither torch nor GDAL; names load on first use."""
    code = (
        "import sys, geodetect; heavy = {'torch', 'rasterio', 'geopandas'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        geodetect.nope  # noqa: B018


def test_docs_list_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [n for n in API_NAMES if f"`{n}" not in text]
    assert not missing, f"docs/api.md does not mention {missing}"
