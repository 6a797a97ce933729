"""geodetect: rotation-aware object detection in geospatial imagery and point clouds.

The public API — the functions the command line calls — is imported lazily, so that
`import geodetect` stays cheap (no torch, no GDAL) until a name is used::

    from geodetect import load_config, make_pair, train, infer, evaluate

    train_scene, test_scene = make_pair("data", size=512)
    model = train([train_scene.image], train_scene.labels, config=load_config(None), out_dir="run")
    detections = infer(model, [test_scene.image], out="detections.gpkg")
    print(evaluate(detections, test_scene.truth)["mean_ap"])

`geodetect.train`, `geodetect.infer`, `geodetect.evaluate` and `geodetect.pretrain` are
functions; they live in the modules `geodetect.training`, `geodetect.inference`,
`geodetect.evaluation` and `geodetect.pretraining` (a module and a function never share a
name). See docs/api.md for the whole list.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (the command each one backs, where there is one)
_API = {
    # configuration
    "Config": "config",
    "load_config": "config",
    # the main job: geodetect samples / train / infer / evaluate
    "write_samples": "samples",
    "train": "training",
    "pretrain": "pretraining",
    "load_model": "model",
    "infer": "inference",
    "detect": "detection",
    "export_onnx": "export",
    "evaluate": "evaluation",
    "precision_recall_curves": "evaluation",
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
