"""The README's real-imagery picture: detections on the held-out right third of the NEON
Yellowstone crop, from a `benchmarks/bench_real.py --keep DIR` run.

    .venv/bin/python docs/images/make_real_figure.py DIR
writes docs/images/real_crowns.jpg: a 600 x 900 px window of the test third (60 x 90 m),
detections in yellow (score >= the best-F1 threshold), annotated crowns in thin cyan.
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from PIL import Image, ImageDraw

OUT = Path(__file__).with_name("real_crowns.jpg")
WINDOW = (100, 900, 600, 900)  # col, row, width, height in the test third


def _draw(draw: ImageDraw.ImageDraw, gdf: gpd.GeoDataFrame, inv, colour, width: int) -> None:
    c0, r0 = WINDOW[:2]
    for geom in gdf.geometry:
        pts = [inv * xy for xy in geom.exterior.coords]
        draw.line([(x - c0, y - r0) for x, y in pts], fill=colour, width=width)


def main(run: Path) -> None:
    from geodetect.evaluation import evaluate

    image = run / "real" / "yell_test.tif"
    pred, truth = run / "yell_pred.gpkg", run / "real" / "yell_truth.gpkg"
    cut = evaluate(pred, truth, iou=0.4)["classes"]["tree"]["threshold"] or 0.0
    c0, r0, w, h = WINDOW
    with rasterio.open(image) as src:
        rgb = src.read(window=((r0, r0 + h), (c0, c0 + w)))
        inv = ~src.transform
    im = Image.fromarray(np.moveaxis(rgb, 0, -1))
    draw = ImageDraw.Draw(im)
    _draw(draw, gpd.read_file(truth), inv, (0, 255, 255), 1)
    det = gpd.read_file(pred)
    _draw(draw, det[det["score"] >= cut], inv, (255, 230, 0), 3)
    im.save(OUT, quality=85, optimize=True)
    print(OUT, f"threshold {cut:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
