"""geodetect: rotation-aware object detection in geospatial imagery and point clouds.

The public API is imported lazily so that `import geodetect` stays cheap (no torch, no GDAL).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "GeodetectError": "errors",
    "Config": "config",
    "load_config": "config",
    "open_raster": "raster",
    "RasterInfo": "raster",
    "Grid": "raster",
    "rasterize_cloud": "pointcloud",
    "read_labels": "labels",
    "write_vector": "labels",
    "make_sample_data": "data",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        module = importlib.import_module(f"geodetect.{_API[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'geodetect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
