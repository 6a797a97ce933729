"""The geodetect dock in a real napari viewer (run under xvfb-run): label, save, load, review."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Polygon

from geodetect.plugin import _coords as co
from geodetect.plugin import _label_layer as ll

pytestmark = pytest.mark.gui


@pytest.fixture
def scene(sample_small, tmp_path: Path) -> SimpleNamespace:
    """A private copy of the small sample (autosave sidecars must not leak between tests)."""
    paths = {}
    for name in ("image", "cloud", "labels", "truth"):
        src = Path(getattr(sample_small, name))
        paths[name] = Path(shutil.copy(src, tmp_path / src.name))
    return SimpleNamespace(**paths)


@pytest.fixture
def dock(make_napari_viewer, scene):
    from geodetect.plugin._dock import GeodetectWidget

    viewer = make_napari_viewer()
    viewer.open(str(scene.image), plugin="geodetect")
    widget = GeodetectWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def _grid(dock):
    meta = dock.viewer.layers["scene"].metadata[co.KEY]
    from affine import Affine

    return Affine(*meta["transform"]), meta["shape"]


def _world(dock, px):
    """napari world (row, col) of pixel-frame points (x, y)."""
    transform, _ = _grid(dock)
    return co.map_to_world(co.pixel_to_map(np.asarray(px, float), transform), True)


def _expected_corners(cx, cy, length, width, heading):
    """FL, FR, BR, BL of a box in the map frame (y north), written out by hand."""
    t = math.radians(heading)
    fwd = np.array([math.sin(t), math.cos(t)])
    right = np.array([math.cos(t), -math.sin(t)])
    c = np.array([cx, cy])
    h, w = length / 2, width / 2
    return np.array(
        [
            c + fwd * h - right * w,
            c + fwd * h + right * w,
            c - fwd * h + right * w,
            c - fwd * h - right * w,
        ]
    )


def test_drawn_rotated_rectangle_saves_in_scene_crs(dock, tmp_path: Path) -> None:
    """Drag back -> front at 30° east of north, width 2 m: the saved polygon is exact."""
    transform, _ = _grid(dock)
    cx, cy = co.pixel_to_map(np.array([[100.0, 120.0]]), transform)[0]
    t = math.radians(30)
    back = (cx - 2.5 * math.sin(t), cy - 2.5 * math.cos(t))
    front = (cx + 2.5 * math.sin(t), cy + 2.5 * math.cos(t))
    w = co.map_to_world(np.array([back, front]), True)
    assert dock.add_positive(w[0], w[1], width=2.0, cls="vehicle") == 0
    out = dock.save_labels(tmp_path / "labels.gpkg")
    gdf = gpd.read_file(out)
    assert gdf.crs.to_epsg() == 32633
    row = gdf.iloc[0]
    assert (row["label"], row["class"], row["image"]) == ("positive", "vehicle", "scene.tif")
    assert row["heading_deg"] == pytest.approx(30.0, abs=1e-6)
    corners = np.asarray(row.geometry.exterior.coords)[:4]
    np.testing.assert_allclose(corners, _expected_corners(cx, cy, 5.0, 2.0, 30.0), atol=1e-6 * 0.25)


def test_rectangle_on_the_raster_edge_is_exact(dock, tmp_path: Path) -> None:
    """A positive spanning the whole raster comes back as the raster's footprint (1e-6 px)."""
    transform, (h, w) = _grid(dock)
    back, front = _world(dock, [[0.0, h / 2], [w, h / 2]])
    dock.add_positive(back, front, width=h * 0.25, cls="building")
    poly = gpd.read_file(dock.save_labels(tmp_path / "edge.gpkg")).geometry[0]
    px = co.map_to_pixel(np.asarray(poly.exterior.coords)[:4], transform)
    expected = {(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)}
    for x, y in px:
        assert min(math.hypot(x - a, y - b) for a, b in expected) < 1e-6


def test_keys_rotate_flip_widen_and_undo(dock) -> None:
    transform, _ = _grid(dock)
    back, front = _world(dock, [[50.0, 50.0], [50.0, 30.0]])  # pointing north, 5 m
    dock.add_positive(back, front, width=2.0, cls="vehicle")
    pos = dock.layer(ll.POSITIVES)
    pos.selected_data = {0}
    dock.rotate_selected(5.0)
    dock.flip_selected()
    dock.scale_width_selected(1.1)
    f = pos.features.iloc[0]
    assert f["heading_deg"] == pytest.approx(185.0)
    assert f["angle"] == pytest.approx(5.0)
    assert f["width"] == pytest.approx(2.2)
    gdf = dock.labels_frame()
    assert gdf["heading_deg"].iloc[0] == pytest.approx(185.0)
    dock.undo()
    dock.undo()
    assert dock.layer(ll.POSITIVES).features.iloc[0]["heading_deg"] == pytest.approx(5.0)
    dock.undo()
    dock.undo()
    assert len(dock.layer(ll.POSITIVES).data) == 0


def test_drag_draws_a_positive(dock) -> None:
    """The drag callback (mouse press, moves, release) adds one fronted rectangle."""
    dock.set_tool("positive")
    assert not dock.viewer.camera.mouse_pan
    back, front = _world(dock, [[10.0, 10.0], [30.0, 10.0]])  # towards east
    event = SimpleNamespace(position=tuple(back), type="mouse_press")
    gen = dock._drag_draw(dock.viewer, event)
    next(gen)
    event.type, event.position = "mouse_move", tuple((back + front) / 2)
    next(gen)
    event.type, event.position = "mouse_release", tuple(front)
    with pytest.raises(StopIteration):
        next(gen)
    f = dock.layer(ll.POSITIVES).features.iloc[0]
    assert f["heading_deg"] == pytest.approx(90.0)
    assert f["length"] == pytest.approx(20 * 0.25)
    dock.set_tool("pan")
    assert dock.viewer.camera.mouse_pan


def test_load_shows_the_same_shapes_and_round_trips(dock, scene, tmp_path: Path) -> None:
    """Loading the sample labels and saving again gives the same geometries and fields."""
    from geodetect.labels import read_labels

    assert dock.load_labels(scene.labels)
    src = read_labels(scene.labels)
    counts = dock.label_counts()
    n_pos = int((src["label"] == "positive").sum())
    assert sum(counts["positives"].values()) == n_pos
    assert counts["negatives"] >= int((src["label"] == "negative").sum())
    assert dock.has_front["vehicle"] and not dock.has_front["building"]
    out = gpd.read_file(dock.save_labels(tmp_path / "again.geojson"))
    for label in ("positive", "negative"):
        a = src[src["label"] == label].geometry.union_all()
        b = out[out["label"] == label].geometry.union_all()
        assert a.symmetric_difference(b).area < 1e-6
    got = out[out["label"] == "positive"].sort_values("heading_deg")["heading_deg"].dropna()
    want = src[src["label"] == "positive"].sort_values("heading_deg")["heading_deg"].dropna()
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), atol=1e-6)


def test_negative_with_hole_round_trips(dock, scene, tmp_path: Path) -> None:
    from geodetect.labels import write_vector

    transform, _ = _grid(dock)
    outer = co.pixel_to_map(np.array([[10, 10], [90, 10], [90, 70], [10, 70]], float), transform)
    hole = co.pixel_to_map(np.array([[30, 30], [50, 30], [50, 50], [30, 50]], float), transform)
    poly = Polygon(outer, [hole])
    gdf = gpd.GeoDataFrame(
        {"label": ["negative"], "class": [None], "image": ["scene.tif"], "heading_deg": [np.nan]},
        geometry=[poly],
        crs="EPSG:32633",
    )
    path = write_vector(gdf, tmp_path / "neg.gpkg")
    assert dock.load_labels(path)
    assert dock.label_counts()["negatives"] == 1
    back = gpd.read_file(dock.save_labels(tmp_path / "neg2.gpkg")).geometry[0]
    assert back.equals_exact(poly, 1e-9)
    # a hand-drawn negative (world coordinates) becomes a plain polygon
    dock.add_negative(_world(dock, [[100, 100], [120, 100], [110, 120]]))
    assert len(dock.labels_frame()) == 2


def test_autosave_and_restore(dock, scene, qtbot, make_napari_viewer) -> None:
    from geodetect.plugin._dock import GeodetectWidget
    from geodetect.plugin._model import autosave_path

    side = autosave_path(scene.image)
    dock.add_positive(*_world(dock, [[20.0, 20.0], [20.0, 40.0]]), cls="vehicle")
    qtbot.waitUntil(side.is_file, timeout=5000)
    assert len(gpd.read_file(side)) == 1
    # "crash": a fresh viewer on the same scene gets the labels back
    viewer = make_napari_viewer()
    viewer.open(str(scene.image), plugin="geodetect")
    other = GeodetectWidget(viewer)
    assert other.ensure_label_layers()
    assert other.label_counts()["positives"] == {"vehicle": 1}


def test_accept_and_reject_detections(dock) -> None:
    """a: a detection becomes a positive (exact box, heading); x: it becomes a hard negative."""
    transform, _ = _grid(dock)
    centres = co.pixel_to_map(np.array([[40.0, 40.0], [80.0, 40.0], [120.0, 40.0]]), transform)
    boxes = [(x, y, 4.6, 1.9, 60.0) for x, y in centres]
    polys = [Polygon(_expected_corners(x, y, 4.6, 1.9, 240.0)) for x, y, *_ in boxes]
    gdf = gpd.GeoDataFrame(
        {
            "class": ["vehicle"] * 3,
            "score": [0.9, 0.6, 0.4],
            "angle_deg": [60.0] * 3,
            "heading_deg": [240.0] * 3,
            "length_m": [4.6] * 3,
            "width_m": [1.9] * 3,
            "image": ["scene.tif"] * 3,
        },
        geometry=polys,
        crs="EPSG:32633",
    )
    dock.show_detections(gdf)
    det = dock.layer(ll.DETECTIONS)
    assert len(det.data) == 3 and [len(d) for d in det.data] == [5, 5, 5]  # nosed: fronted
    det.selected_data = {0}
    assert dock.accept_selected() == 1
    det.selected_data = {1}  # originally the third
    assert dock.reject_selected() == 1
    assert len(det.data) == 1 and det.features["score"].iloc[0] == pytest.approx(0.6)
    saved = dock.labels_frame()
    pos = saved[saved["label"] == "positive"].iloc[0]
    assert pos["heading_deg"] == pytest.approx(240.0)
    assert pos.geometry.equals_exact(polys[0], 1e-6)
    neg = saved[saved["label"] == "negative"].iloc[0]
    assert neg.geometry.symmetric_difference(polys[2]).area < 1e-9


def test_status_shows_map_coordinates(dock) -> None:
    transform, _ = _grid(dock)
    x, y = co.pixel_to_map(np.array([[12.0, 34.0]]), transform)[0]
    dock.viewer.cursor.position = tuple(co.map_to_world(np.array([[x, y]]), True)[0])
    dock._on_cursor()
    assert f"x={x:.2f}, y={y:.2f} EPSG:32633" == dock.coords.text()


def test_writer_and_sample_data(tmp_path: Path, make_napari_viewer) -> None:
    """Sample data opens image, cloud layers and labels; the npe2 writer saves the labels."""
    from geodetect.plugin._sample_data import demo_scene
    from geodetect.plugin._writer import write_labels

    layers = demo_scene(tmp_path / "demo", size=256)
    viewer = make_napari_viewer()
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    names = [ly.name for ly in viewer.layers]
    assert {"scene", "scene NDSM", "scene points", ll.POSITIVES, ll.NEGATIVES} <= set(names)
    pos, neg = viewer.layers[ll.POSITIVES], viewer.layers[ll.NEGATIVES]
    assert len(pos.data) > 0 and len(neg.data) > 0
    out = write_labels(
        str(tmp_path / "w.gpkg"), [pos.as_layer_data_tuple(), neg.as_layer_data_tuple()]
    )
    gdf = gpd.read_file(out[0])
    assert (gdf["label"] == "positive").sum() == len(pos.data)
    assert (gdf["label"] == "negative").sum() == len(neg.data)
    assert write_labels(str(tmp_path / "none.gpkg"), []) == []
    assert isinstance(pd.DataFrame(pos.features), pd.DataFrame)


def test_save_never_writes_over_the_scene_or_cloud(dock, scene, tmp_path: Path) -> None:
    """Save… wrote wherever it was pointed, the scene itself included: now a one-line message
    in the dock and the input untouched."""
    dock.viewer.open(str(scene.cloud), plugin="geodetect")
    dock.add_positive(*_world(dock, [[20.0, 20.0], [20.0, 40.0]]), cls="vehicle")
    for target in (scene.image, scene.cloud):
        before = target.read_bytes()
        assert dock.save_labels(target) is None
        assert "would overwrite the input" in dock.last_error and "\n" not in dock.last_error
        assert dock.message.text().startswith("⚠ save ") and target.read_bytes() == before
    assert dock.save_labels(tmp_path / "fine.gpkg") == tmp_path / "fine.gpkg"


def test_writer_says_why_it_wrote_nothing(dock, scene, caplog) -> None:
    """The npe2 writer returns [] (npe2's "nothing written"), never silently: it logs why."""
    from geodetect.plugin._writer import write_labels

    dock.add_positive(*_world(dock, [[20.0, 20.0], [20.0, 40.0]]), cls="vehicle")
    layers = [dock.layer(n).as_layer_data_tuple() for n in (ll.POSITIVES, ll.NEGATIVES)]
    before = scene.image.read_bytes()
    with caplog.at_level("WARNING", logger="geodetect.plugin._writer"):
        assert write_labels(str(scene.image), layers) == []
        assert write_labels(str(scene.image.with_name("x.gpkg")), []) == []
    assert scene.image.read_bytes() == before
    said = [r.getMessage() for r in caplog.records]
    assert any("would overwrite the input" in m for m in said), said
    assert any("no geodetect positives / negatives layer" in m for m in said), said


def test_the_qt_binding_is_qt6(make_napari_viewer) -> None:
    """Issue 12.14: PyQt5 is deprecated by napari 0.9; the `gui` extra and the binding napari
    runs on are Qt6."""
    import sys
    from importlib.metadata import requires

    import qtpy
    from qtpy.QtCore import qVersion
    from qtpy.QtWidgets import QApplication

    make_napari_viewer()
    assert qtpy.API_NAME in ("PyQt6", "PySide6")
    assert qVersion().startswith("6.")
    bindings = {c.__module__.split(".")[0] for c in type(QApplication.instance()).__mro__}
    assert bindings & {"PyQt6", "PySide6"} and not bindings & {"PyQt5", "PySide2"}
    assert "PyQt5" not in sys.modules and "PySide2" not in sys.modules
    gui = [r for r in requires("geodetect") if 'extra == "gui"' in r]
    assert any(r.startswith(("PyQt6", "PySide6")) for r in gui), gui
    assert not any(r.startswith(("PyQt5", "PySide2")) for r in gui), gui
