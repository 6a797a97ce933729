"""Data-layer throughput: LAZ rasterisation (points/s, peak RSS) and GeoTIFF window reads (Mpx/s).

    python benchmarks/bench_data.py                      # 20 M points, 10k x 10k raster
    python benchmarks/bench_data.py --points 2e6 --size 3000

Each measurement runs in a fresh (spawned) process so its peak RSS is its own. Inputs are
generated chunk by chunk / window by window, so generation itself stays small in memory.
Timings on a shared CPU are noisy: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE_M = 2000.0  # cloud footprint (metres)
X0, Y0 = 500_000.0, 4_000_000.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_laz(path: Path, n_points: int, chunk: int = 1_000_000, seed: int = 0) -> None:
    """Synthetic terrain with boxes ('buildings'), 60 % ground class, written chunk by chunk."""
    import laspy
    from pyproj import CRS

    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = [0.01, 0.01, 0.01]
    header.offsets = [X0, Y0, 0.0]
    header.add_crs(CRS.from_epsg(32633))
    rng = np.random.default_rng(seed)
    with laspy.open(path, mode="w", header=header) as writer:
        for start in range(0, n_points, chunk):
            n = min(chunk, n_points - start)
            pts = laspy.ScaleAwarePointRecord.zeros(n, header=header)
            x, y = rng.uniform(0, SIDE_M, n), rng.uniform(0, SIDE_M, n)
            ground = 100 + 5 * np.sin(x / 150) + 3 * np.cos(y / 90)
            building = ((x % 60) < 20) & ((y % 80) < 25)
            is_ground = ~building & (rng.random(n) < 0.6)
            pts.x, pts.y = X0 + x, Y0 + y
            pts.z = ground + np.where(building, 8.0, 0.0) + rng.normal(0, 0.05, n)
            pts.classification = np.where(is_ground, 2, np.where(building, 6, 1)).astype(np.uint8)
            writer.write_points(pts)


def make_tif(path: Path, size: int, rows: int = 512) -> None:
    """A size x size 3-band uint8 tiled deflate GeoTIFF, written in row blocks."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from geodetect.geotiff import raster_writer
    from geodetect.raster import Grid

    grid = Grid(CRS.from_epsg(32633), Affine(0.3, 0, X0, 0, -0.3, Y0), size, size)
    rng = np.random.default_rng(0)
    with raster_writer(path, grid, 3, "uint8") as dst:
        for r in range(0, size, rows):
            h = min(rows, size - r)
            yy, xx = np.mgrid[r : r + h, 0:size]
            base = ((np.sin(xx / 37.0) + np.cos(yy / 53.0)) * 60 + 128).astype(np.uint8)
            noise = rng.integers(0, 20, (3, h, size), dtype=np.uint8)
            dst.write(base[None] + noise, window=Window(0, r, size, h))


def bench_rasterize(laz: str, kind: str, resolution: float, out: str) -> dict:
    from geodetect.pointcloud import open_cloud, rasterize_file

    n = open_cloud(laz).count
    t = time.perf_counter()
    rasterize_file(laz, out, resolution=resolution, kind=kind)
    dt = time.perf_counter() - t
    return {"what": f"rasterize {kind} @ {resolution} m", "seconds": dt,
            "rate": f"{n / dt / 1e6:.2f} M points/s", "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def bench_read(tif: str, tile: int, gsd_factor: float) -> dict:
    from geodetect.raster import SceneReader, open_raster, tile_windows, working_grid

    info = open_raster(tif)
    grid = working_grid(info, info.gsd * gsd_factor)
    wins = tile_windows(grid.width, grid.height, tile, 0)
    if gsd_factor != 1.0:
        wins = wins[:: max(1, len(wins) // 64)]  # warped reads are slower: sample 64 tiles
    t = time.perf_counter()
    px = 0
    with SceneReader(tif, grid) as reader:
        for w in wins:
            data, _ = reader.read(w)
            px += data.shape[1] * data.shape[2]
    dt = time.perf_counter() - t
    what = "native" if gsd_factor == 1.0 else f"resampled x{gsd_factor}"
    return {"what": f"read {tile}px tiles, {what}", "seconds": dt,
            "rate": f"{px / dt / 1e6:.1f} Mpx/s ({len(wins)} tiles)",
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def in_child(fn, *args) -> dict:
    """Run fn in a fresh spawned process (own peak RSS)."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def report(row: dict) -> None:
    print(f"{row['what']:<40} {row['seconds']:8.1f} s  {row['rate']:<28} "
          f"peak RSS {row['peak_rss_mb']:.0f} MiB", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=float, default=20e6, help="points in the synthetic LAZ")
    ap.add_argument("--size", type=int, default=10_000, help="side of the synthetic GeoTIFF")
    ap.add_argument("--resolution", type=float, default=1.0, help="DEM cell size (m)")
    ap.add_argument("--dir", default=None, help="where to write inputs (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        laz, tif = Path(tmp) / "bench.laz", Path(tmp) / "bench.tif"
        n = int(args.points)
        t = time.perf_counter()
        make_laz(laz, n)
        print(f"generated {n:,} points in {time.perf_counter() - t:.1f} s "
              f"({laz.stat().st_size / 2**20:.0f} MiB LAZ)", flush=True)  # fmt: skip
        for kind in ("dsm", "ndsm"):
            report(in_child(bench_rasterize, str(laz), kind, args.resolution, f"{tmp}/{kind}.tif"))
        laz.unlink()
        t = time.perf_counter()
        make_tif(tif, args.size)
        print(f"generated {args.size}x{args.size}x3 GeoTIFF in {time.perf_counter() - t:.1f} s "
              f"({tif.stat().st_size / 2**20:.0f} MiB)", flush=True)  # fmt: skip
        report(in_child(bench_read, str(tif), 512, 1.0))
        report(in_child(bench_read, str(tif), 512, 1.37))


if __name__ == "__main__":
    main()
