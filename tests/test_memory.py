"""RELIABILITY 10, larger than RAM: `infer` over a huge, mostly empty, compressed GeoTIFF needs
no more memory than over a small one: it reads window by window (GDAL's block cache is capped
in raster.py) and skips nodata, so its peak is set by tile × batch, not by the scene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _painted import grid
from rasterio.windows import Window
from test_bad_inputs import write_model

# the child prints its own peak RSS (KiB) last
_OWN_PEAK = (
    "import resource, sys; from geodetect.cli import main; rc = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
)


def _peak_mib(model: Path, folder: Path, side: int) -> float:
    """Peak RSS of `geodetect infer` over a side² scene, nodata but three 512² patches."""
    g = grid(side)
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "crs": g.crs, "transform": g.transform, "nodata": 0, "compress": "deflate",
        "tiled": True, "blockxsize": 512, "blockysize": 512,
    }  # fmt: skip
    patch = np.random.default_rng(0).integers(1, 255, (3, 512, 512), dtype=np.uint8)
    scene = folder / f"scene_{side}.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        for r, c in [(0, 0), (side // 2, side // 3), (side - 512, side - 512)]:
            dst.write(patch, window=Window(c, r, 512, 512))
    out = folder / f"det_{side}.gpkg"
    argv = ["infer", str(model), str(scene), "--out", str(out), "--device", "cpu"]
    run = subprocess.run(
        [sys.executable, "-c", _OWN_PEAK, *argv, "--batch-size", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.exists()
    return int(run.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_scene(tmp_path: Path) -> None:
    model = write_model(tmp_path / "model.pt")
    small = _peak_mib(model, tmp_path, 1024)  # 3 MiB decoded
    big = _peak_mib(model, tmp_path, 16384)  # 768 MiB decoded, a few MiB on disk
    # the 765 MiB more pixels may add GDAL's capped block cache (128 MB) and noise, no more
    assert big - small < 300, f"peak RSS {small:.0f} MiB -> {big:.0f} MiB"
