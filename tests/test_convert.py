"""`geodetect convert` and `train --labels` with other tools' files: DOTA, YOLO-OBB, COCO, CVAT."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from geodetect import geometry
from geodetect.boxes import detections_frame, labels_frame
from geodetect.cli import main
from geodetect.convert import convert_labels
from geodetect.labels import labels_for_grid, read_labels, read_vector, write_vector
from geodetect.raster import Grid, open_raster

# awkward on purpose: fractional coordinates, a front on each side, angles near the wrap
BOXES = np.array(
    [
        [40.123456789, 30.5, 20.25, 8.75, 12.5],
        [120.75, 80.125, 30.0, 12.0, 179.25],
        [60.5, 120.0625, 18.0, 7.5, 90.0],
        [150.3, 40.7, 40.0, 22.0, 47.0],
    ]
)
HEADS = np.array([12.5, 359.25, 270.0, np.nan])
CLASSES = ["vehicle", "vehicle", "vehicle", "building"]
NEG = [shapely.box(5, 140, 60, 155)]
EXT = {"dota": ".txt", "yolo": ".yaml", "coco": ".json", "cvat": ".xml"}


def _scene(folder, rotated: bool):
    transform = Affine(0.5, 0, 500_000.0, 0, -0.5, 5_000_000.0)
    if rotated:  # a rotated geotransform: pixels and map disagree on "north"
        transform = transform * Affine.rotation(20)
    grid = Grid(rasterio.crs.CRS.from_epsg(32633), transform, 200, 160)
    path = folder / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=200,
        height=160,
        count=3,
        dtype="uint8",
        crs=grid.crs,
        transform=transform,
    ) as ds:
        ds.write(np.full((3, 160, 200), 90, np.uint8))
    return path, grid


@pytest.fixture(params=[False, True], ids=["north-up", "rotated"])
def scene(request, tmp_path):
    return _scene(tmp_path, request.param)


def _pixels(path, scene_path):
    info = open_raster(scene_path)
    return labels_for_grid(read_labels(path, scenes=[info]), info.grid, "scene.tif")


def _same(sl, negatives: int):
    assert sl.classes == CLASSES
    np.testing.assert_allclose(sl.boxes[:, :4], BOXES[:, :4], atol=1e-6)
    assert np.abs(geometry.angle_difference(sl.boxes[:, 4], BOXES[:, 4])).max() < 1e-6
    np.testing.assert_array_equal(np.isnan(sl.headings), np.isnan(HEADS))
    ok = ~np.isnan(HEADS)
    assert np.abs(geometry.angle_difference(sl.headings[ok], HEADS[ok], 360)).max() < 1e-6
    assert len(sl.negatives) == negatives


@pytest.mark.parametrize("fmt", list(EXT))
def test_label_round_trip_keeps_boxes_classes_angles_headings(fmt, scene, tmp_path):
    scene_path, grid = scene
    labels = write_vector(
        labels_frame(BOXES, CLASSES, HEADS, NEG, grid, "scene.tif"), tmp_path / "labels.gpkg"
    )
    mid = tmp_path / "out" / f"labels{EXT[fmt]}"
    mid.parent.mkdir()
    argv = ["convert", str(labels), str(mid), "--image", str(scene_path)]
    assert main(argv) == 0
    kept = 1 if fmt in ("coco", "cvat") else 0
    _same(_pixels(mid, scene_path), kept)  # what `train --labels labels.json` reads
    back = tmp_path / "back.gpkg"
    assert main(["convert", str(mid), str(back), "--image", str(scene_path)]) == 0
    _same(_pixels(back, scene_path), kept)
    assert not [p for p in mid.parent.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("fmt", list(EXT))
def test_detection_round_trip_keeps_scores(fmt, scene, tmp_path):
    scene_path, grid = scene
    scores = np.array([0.9, 0.25, 0.5, 0.75])
    det = detections_frame(BOXES, scores, CLASSES, HEADS, grid, "scene.tif")
    src = write_vector(det, tmp_path / "det.gpkg")
    mid, back = tmp_path / f"det{EXT[fmt]}", tmp_path / "back.geojson"
    convert_labels(src, mid, [str(scene_path)])
    convert_labels(mid, back, [str(scene_path)])
    out = read_vector(back)
    assert list(out.columns[:-1]) == list(det.columns[:-1])
    np.testing.assert_allclose(out["score"], scores)
    np.testing.assert_allclose(out["length_m"], det["length_m"], rtol=1e-9)
    assert np.abs(geometry.angle_difference(out["angle_deg"], det["angle_deg"])).max() < 1e-6
    assert shapely.equals_exact(out.geometry.values, det.geometry.values, 1e-6).all()


def test_samples_reads_a_cvat_file(scene, tmp_path):
    scene_path, grid = scene
    three = labels_frame(BOXES[:3], CLASSES[:3], HEADS[:3], NEG, grid)  # two of each class
    labels = write_vector(three, tmp_path / "l.gpkg")
    xml = tmp_path / "l.xml"
    convert_labels(labels, xml, [str(scene_path)])
    out = tmp_path / "chips"
    assert main(["samples", str(scene_path), "--labels", str(xml), "--out", str(out)]) == 0
    rows = (out / "samples.csv").read_text().splitlines()
    assert sum(",positive," in r for r in rows) == 3 and sum(",negative," in r for r in rows) > 0


def test_pixel_frame_without_scene(tmp_path):
    """No --image: a CRS-less file is pixel coordinates, both ways."""
    grid = Grid(None, Affine.identity(), 200, 160)
    labels = write_vector(
        labels_frame(BOXES, CLASSES, HEADS, [], grid, "a.png"), tmp_path / "l.gpkg"
    )
    convert_labels(labels, tmp_path / "l.txt")
    convert_labels(tmp_path / "l.txt", tmp_path / "b.gpkg")
    sl = labels_for_grid(read_labels(tmp_path / "b.gpkg"), grid)
    _same(sl, 0)


def test_bad_input_is_one_line(scene, tmp_path, capsys):
    scene_path, grid = scene
    labels = write_vector(labels_frame(BOXES, CLASSES, HEADS, NEG, grid), tmp_path / "l.gpkg")
    cases = [
        (["convert", str(labels), str(tmp_path / "o.yaml")], "give --image SCENE"),
        (["convert", str(labels), str(labels)], "would overwrite the input"),
        (["convert", str(tmp_path / "none.txt"), str(tmp_path / "o.gpkg")], "no such file"),
    ]
    for argv, what in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and what in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.gpkg", "scene.tif"]
    assert main(["convert", str(labels), str(tmp_path / "o.txt"), "--image", str(scene_path)]) == 0
    assert "1 negative polygon(s) left out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.txt", "1 2 3 4 5 6 7 8 car 0 high\n"),
        ("bad2.txt", "0 0 10 0 10 3 0 9 car 0\n"),  # not a rectangle
        ("bad.json", '{"images": [{"id": 1}], "categories": [], "annotations": []}'),
        ("bad.xml", "<annotations><image name='a.tif'><box label='x'/></image></annotations>"),
    ],
)
def test_broken_foreign_files_are_one_line(name, text, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    assert main(["convert", str(tmp_path / name), str(tmp_path / "o.gpkg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / name}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o.gpkg").exists()


def test_other_tools_plain_shapes(tmp_path):
    """Plain COCO (upright `bbox` only) and CVAT 4-point polygons come in as boxes."""
    from geodetect.foreign import read_boxes

    coco = tmp_path / "plain.json"
    coco.write_text(
        '{"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}],'
        ' "categories": [{"id": 3, "name": "car"}],'
        ' "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 8, 4]}]}'
    )
    (img,) = read_boxes(coco)
    np.testing.assert_allclose(img.boxes, [[14.0, 7.0, 8.0, 4.0, 90.0]])
    assert img.classes == ["car"] and np.isnan(img.headings).all()
    cvat = tmp_path / "poly.xml"
    cvat.write_text(
        "<annotations><image name='a.png' width='50' height='40'>"
        "<polygon label='car' points='10,5;18,5;18,9;10,9'/></image></annotations>"
    )
    (img,) = read_boxes(cvat)
    np.testing.assert_allclose(img.boxes, [[14.0, 7.0, 8.0, 4.0, 90.0]])


def test_reprojecting_turns_headings_by_the_meridian_convergence(tmp_path):
    """Labels drawn in UTM 33 converted for a scene in UTM 34 (same place, ~4° of grid
    convergence apart): the front keeps pointing the same true direction."""
    from geodetect.north import turn

    labels33 = labels_frame(BOXES[:1], CLASSES[:1], HEADS[:1], [], _scene(tmp_path, False)[1])
    src = write_vector(labels33, tmp_path / "l33.gpkg")
    moved = labels33.to_crs("EPSG:32634")
    x0, y0 = (round(v) - 50 for v in moved.geometry.iloc[0].centroid.coords[0])
    transform = Affine(0.5, 0, x0, 0, -0.5, y0 + 100)
    scene = tmp_path / "s34.tif"
    with rasterio.open(
        scene, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8",
        crs="EPSG:32634", transform=transform,
    ) as ds:  # fmt: skip
        ds.write(np.full((3, 300, 300), 90, np.uint8))
    coco = tmp_path / "l.json"
    convert_labels(src, coco, [str(scene)])
    back = read_labels(coco, scenes=[open_raster(scene)])
    expected = (HEADS[0] + turn(labels33, moved)[0]) % 360
    assert abs(geometry.angle_difference(expected, HEADS[0], 360)) > 3  # a real turn
    got = float(back["heading_deg"].iloc[0])
    assert abs(geometry.angle_difference(got, expected, 360)) < 1e-3


def test_ultralytics_layout_reads_like_our_own(tmp_path):
    """A dataset as Ultralytics lays it out: `path:` root, `train:`/`val:` image folders,
    labels at the image's path with `images` → `labels`. It reads the same boxes as the
    layout `convert` writes."""
    import shutil

    import yaml

    ours = tmp_path / "ours"
    ours.mkdir()
    scene_path, grid = _scene(ours, rotated=False)
    labels = write_vector(
        labels_frame(BOXES, CLASSES, HEADS, NEG, grid, "scene.tif"), ours / "l.gpkg"
    )
    assert main(["convert", str(labels), str(ours / "data.yaml"), "--image", str(scene_path)]) == 0
    ds = tmp_path / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    (ds / "labels" / "train").mkdir(parents=True)
    shutil.copy(scene_path, ds / "images" / "train" / "scene.tif")
    shutil.copy(ours / "labels" / "scene.txt", ds / "labels" / "train" / "scene.txt")
    meta = yaml.safe_load((ours / "data.yaml").read_text())
    meta.update(path="ds", train="images/train", val="images/train")
    (tmp_path / "obb.yaml").write_text(yaml.safe_dump(meta))
    _same(_pixels(tmp_path / "obb.yaml", ds / "images" / "train" / "scene.tif"), 0)


def test_yolo_image_list_keeps_urls(tmp_path):
    """`https://` lines of an image list are URLs, not paths (Path folds `//` into `/`)."""
    from geodetect.formats import _yolo_images

    (tmp_path / "list.txt").write_text("https://h.example/a.tif?sig=1\nrel/b.tif\n\n")
    got = _yolo_images({"train": "list.txt"}, tmp_path)
    assert got == ["https://h.example/a.tif?sig=1", str(tmp_path / "rel" / "b.tif")]


def test_side_files_never_replace_an_input(scene, tmp_path):
    """OUT is new, but YOLO's labels/ (or images.txt) beside it would be the input's own:
    refused before anything moves, and the input's label files keep their bytes."""
    scene_path, grid = scene
    labels = write_vector(
        labels_frame(BOXES, CLASSES, HEADS, NEG, grid, "scene.tif"), tmp_path / "l.gpkg"
    )
    src = tmp_path / "a.yaml"
    assert main(["convert", str(labels), str(src), "--image", str(scene_path)]) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.txt")}
    again = tmp_path / "b.yaml"
    assert main(["convert", str(src), str(again), "--image", str(scene_path)]) == 2
    assert not again.exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.txt")} == before
