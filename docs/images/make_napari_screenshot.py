"""Screenshot of the napari plugin: demo scene, sparse labels, detections under review.

Run under xvfb (from the repository root):
    xvfb-run -a -s '-screen 0 1600x1000x24' \
        .venv/bin/python docs/images/make_napari_screenshot.py [MODEL]
With MODEL (a trained model.pt) the detections are the model's; without one they are the
generated scene's truth objects that are not labelled yet, with made-up scores, so the
review layer can be shown before a model exists.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import napari
import numpy as np

from geodetect.jobs import Job
from geodetect.plugin._dock import GeodetectWidget
from geodetect.plugin._sample_data import demo_scene

OUT = Path(__file__).with_name("napari_plugin.png")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="geodetect-shot-"))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    for data, kwargs, kind in demo_scene(work, size=512):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    dock = GeodetectWidget(viewer)
    viewer.window.add_dock_widget(dock, name="geodetect", area="right")
    if len(sys.argv) > 1:  # the dock's own detect job: `geodetect infer` in a child process
        job = Job(
            "detect",
            {
                "model": sys.argv[1],
                "image": str(work / "scene.tif"),
                "threshold": 0.3,
                "out": str(work / "detections.gpkg"),
            },
        )
        job.wait()
        if job.error:
            raise SystemExit(f"error: {job.error}")
        dets = gpd.read_file(job.result["detections"])
    else:
        truth = gpd.read_file(work / "scene_truth.gpkg")
        labelled = gpd.read_file(work / "scene_labels.gpkg")
        hit = truth.geometry.centroid.within(labelled[labelled["label"] == "positive"].union_all())
        dets = truth[~hit].copy()
        dets["score"] = np.random.default_rng(0).uniform(0.35, 0.98, len(dets))
    dock.show_detections(dets)
    while dock.busy:
        napari.qt.get_qapp().processEvents()
    viewer.layers.selection.active = viewer.layers["detections"]
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    napari.qt.get_qapp().processEvents()
    viewer.screenshot(str(OUT), canvas_only=False)
    print(OUT)
    viewer.close()


if __name__ == "__main__":
    main()
