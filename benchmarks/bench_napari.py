"""The napari dock's timings: open, samples, detect on a 2048² scene, a / x on 1,000 detections,
and the longest GUI stall during each (a 20 ms heartbeat timer on the GUI thread).

    xvfb-run -a -s '-screen 0 1280x1024x24' python benchmarks/bench_napari.py [--size 2048]

The model is the default architecture after a token training run (inference time does not
depend on how well it is trained). Timings on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np


class Heartbeat:
    """Records a tick every 20 ms on the GUI thread; the longest gap is the longest freeze."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def __enter__(self) -> Heartbeat:
        self.ticks.clear()
        self.timer.start(20)
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()

    @property
    def longest(self) -> float:
        return float(np.diff(self.ticks).max()) if len(self.ticks) > 1 else float("nan")


def wait(dock, app) -> float:
    t0 = time.perf_counter()
    while dock.busy:
        app.processEvents()
        time.sleep(0.005)
    if dock.last_error:
        raise SystemExit(f"error: {dock.last_error}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()

    import geopandas as gpd
    import napari
    from qtpy.QtWidgets import QApplication
    from shapely.geometry import Polygon

    from geodetect.data import make_sample_data
    from geodetect.jobs import Job, train_params
    from geodetect.plugin._dock import GeodetectWidget

    work = Path(tempfile.mkdtemp(prefix="geodetect-bench-napari-"))
    data = make_sample_data(work, size=args.size, seed=3, label_fraction=0.4)
    job = Job(
        "train",
        train_params(
            [str(data.image)],
            data.labels,
            work / "run",
            None,
            {"train.epochs": 1, "train.chips_per_epoch": 8, "train.batch_size": 4},
        ),
    )
    job.wait(1800)
    model = job.result["model"]

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1250, 950)  # noqa: SLF001
    dock = GeodetectWidget(viewer)
    viewer.window.add_dock_widget(dock)
    figures = {}
    t0 = time.perf_counter()
    viewer.open(str(data.image), plugin="geodetect")
    app.processEvents()
    figures["open scene (s)"] = time.perf_counter() - t0
    dock.load_labels(data.labels, ask=False)
    wait(dock, app)
    with Heartbeat() as hb:
        dock.show_samples(work / "samples")
        figures["samples (s)"] = wait(dock, app)
    figures["samples: longest GUI stall (s)"] = hb.longest
    dock.detect_tab.threshold.setValue(0.3)
    with Heartbeat() as hb:
        dock.run_detection(region=False, model=model)
        figures[f"detect in scene {args.size}² (s)"] = wait(dock, app)
    figures["detect: longest GUI stall (s)"] = hb.longest

    rng = np.random.default_rng(0)
    meta = viewer.layers["scene"].metadata["geodetect"]
    from affine import Affine

    t = Affine(*meta["transform"])
    centres = [t * tuple(p) for p in rng.uniform(20, args.size - 20, (1000, 2))]

    def rect(cx: float, cy: float) -> Polygon:
        a = math.radians(30)
        f, r = np.array([math.sin(a), math.cos(a)]), np.array([math.cos(a), -math.sin(a)])
        c = np.array([cx, cy])
        return Polygon([c + f * 2.3 - r, c + f * 2.3 + r, c - f * 2.3 + r, c - f * 2.3 - r])

    gdf = gpd.GeoDataFrame(
        {"class": ["vehicle"] * 1000, "score": rng.uniform(0, 1, 1000), "heading_deg": 30.0},
        geometry=[rect(x, y) for x, y in centres],
        crs=viewer.layers["scene"].metadata["geodetect"]["crs"],
    )
    with Heartbeat() as hb:
        dock.show_detections(gdf)
        figures["show 1,000 detections (s)"] = wait(dock, app)
    figures["show: longest GUI stall (s)"] = hb.longest
    det = dock.layer("detections")
    times = []
    for k in range(10):
        det.selected_data = {k * 7}
        t0 = time.perf_counter()
        dock.accept_selected() if k % 2 == 0 else dock.reject_selected()
        app.processEvents()  # includes the repaint
        times.append(time.perf_counter() - t0)
    figures["a / x on 1,000 detections, median incl. repaint (s)"] = float(np.median(times))
    for name, value in figures.items():
        print(f"{name:55s} {value:8.3f}")
    viewer.close()


if __name__ == "__main__":
    main()
