"""geodetect: rotation-aware object detection in geospatial imagery and point clouds.

The public API — the functions the command line calls — is imported lazily, so that
`import geodetect` stays cheap (no torch, no GDAL) until a name is used::

    from geodetect import load_config, make_pair, train, infer, evaluate

    train_scene, test_scene = make_pair("data", size=512)
    model = train([train_scene.image], train_scene.labels, config=load_config(None), out_dir="run")
    detections = infer(model, [test_scene.image], out="detections.gpkg")
    print(evaluate(detections, test_scene.truth)["mean_ap"])

`geodetect.train`, `geodetect.infer` and `geodetect.evaluate` are the *functions*, even after
their modules were imported; reach the modules with `from geodetect.train import …` or
`importlib.import_module("geodetect.train")`. See docs/api.md for the whole list.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (the command each one backs, where there is one)
_API = {
    # configuration
    "Config": "config",
    "load_config": "config",
    # the main job: geodetect samples / train / infer / evaluate
    "write_samples": "samples",
    "train": "train",
    "pretrain": "pretrain",
    "load_model": "model",
    "infer": "infer",
    "export_onnx": "export",
    "evaluate": "evaluate",
    "precision_recall_curves": "evaluate",
    # data layer: geodetect rasterize, label files, rasters
    "rasterize_cloud": "pointcloud",
    "rasterize_file": "pointcloud",
    "read_labels": "labels",
    "labels_for_grid": "labels",
    "write_vector": "labels",
    "convert_labels": "convert",
    "resolve_scenes": "stac",
    "open_raster": "raster",
    "RasterInfo": "raster",
    "Grid": "raster",
    # sample data (geodetect demo)
    "make_sample_data": "data",
    "make_pair": "data",
    "make_training_set": "data",
    # errors
    "GeodetectError": "errors",
}

# Functions named like the module that holds them: the function is the public name.
_SHADOWED = frozenset(n for n, m in _API.items() if n == m)


class _Package(types.ModuleType):
    """The package module; keeps `geodetect.train` the function when its module loads.

    Importing a submodule makes the import system set it as an attribute of the package,
    which would hide the lazily imported function of the same name from then on.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _SHADOWED
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            return  # the module stays reachable through sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _API:
        module = importlib.import_module(f"{__name__}.{_API[name]}")
        value = getattr(module, name)
        globals()[name] = value  # resolved once; plain attribute lookups from now on
        return value
    raise AttributeError(f"module 'geodetect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
