"""samples: known/unknown masks from sparse labels, validation split, `geodetect samples`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import shapely
from _painted import write_scene

from geodetect.cli import main
from geodetect.config import load_config
from geodetect.project import load_project, split_validation
from geodetect.samples import extract_patches, known_at_stride, write_samples

CARS = np.array(
    [
        [60.0, 60.0, 24.0, 10.0, 30.0],
        [190.0, 70.0, 24.0, 10.0, 120.0],
        [70.0, 190.0, 24.0, 10.0, 75.0],
        [180.0, 180.0, 24.0, 10.0, 160.0],
    ]
)
HEADS = np.array([30.0, 300.0, 75.0, 340.0])
# a negative square with a hole: the hole is unknown, not negative
NEG = shapely.Polygon(
    [(100, 100), (160, 100), (160, 160), (100, 160)],
    [[(120, 120), (140, 120), (140, 140), (120, 140)]],
)


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("painted"), CARS, HEADS, [NEG])


def _project(painted, **over):
    config = load_config(None, {"data.chip_size": 64, **over})
    return load_project([str(painted[0])], str(painted[1]), None, config)


def test_known_mask_is_negatives_and_positives_only(painted):
    project = _project(painted)
    split_validation(project, 0.0, 0)
    pos, neg = extract_patches(project, training=True)
    assert len(pos) == 4 and len(neg) >= 1
    assert project.classes == ["car"] and project.has_front == [True]
    p = neg[0]
    ox, oy = p.origin
    known = p.known.astype(bool)

    def at(x: float, y: float) -> bool:
        return bool(known[int(y - oy), int(x - ox)])

    assert at(105, 105) and at(155, 150)  # inside the negative
    assert not at(130, 130)  # its hole: unknown
    assert ox <= 70 and oy <= 70  # the patch reaches out past the negative to the first car
    assert not at(95, 130)  # outside everything: unknown
    assert at(CARS[0, 0] + 1, CARS[0, 1] + 1)  # inside a labelled positive
    # nothing else is known: the known area equals the labelled area inside the patch
    area = shapely.box(ox, oy, ox + known.shape[1], oy + known.shape[0])
    from geodetect.geometry import box_polygons

    labelled = shapely.union_all([NEG, *box_polygons(CARS)]).intersection(area).area
    assert known.sum() == pytest.approx(labelled, rel=0.05)


def test_validation_labels_are_unknown_in_training_patches(painted):
    project = _project(painted)
    split_validation(project, 0.25, seed=3)
    scene = project.scenes[0]
    assert scene.pos_val.sum() == 1
    held = CARS[scene.pos_val][0]
    pos, _ = extract_patches(project, training=True)
    assert len(pos) == 3
    for p in pos:
        centre = held[:2] - p.origin
        # the held-out car is not a target and its pixels are not known in any training patch
        assert not np.any(np.all(np.isclose(p.boxes[:, :2], centre), axis=1))
        r, c = int(centre[1]), int(centre[0])
        if 0 <= r < p.known.shape[0] and 0 <= c < p.known.shape[1]:
            assert p.known[r, c] == 0
    vpos, _ = extract_patches(project, training=False)
    assert len(vpos) == 1 and len(vpos[0].boxes) == 1


def test_known_at_stride_needs_most_pixels_known():
    valid = np.ones((8, 8), np.uint8)
    known = np.zeros((8, 8), np.uint8)
    known[:4, :2] = 1  # half of cell (0, 0)
    known[4:, 4:] = 1
    valid[4:7, 4:8] = 0  # three quarters of cell (1, 1) is nodata: not enough
    k = known_at_stride(valid, known, 4)
    assert k.tolist() == [[[1.0, 0.0], [0.0, 0.0]]]


def test_samples_import_without_torch():
    """Building samples needs no network: targets come from numpy `geodetect.targets`."""
    code = "import sys, geodetect.samples; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_samples_writes_canonical_positive_chips(painted, tmp_path):
    index = write_samples(
        [str(painted[0])],
        str(painted[1]),
        None,
        load_config(None, {"data.chip_size": 64}),
        tmp_path / "s",
    )
    table = pd.read_csv(index)
    assert list(table.columns[:7]) == [
        "path",
        "array",
        "label",
        "class",
        "image",
        "angle_deg",
        "heading_deg",
    ]
    pos = table[table["label"] == "positive"]
    assert len(pos) == 4 and (table["label"] == "negative").sum() >= 1
    for row in pos.itertuples():
        assert (tmp_path / "s" / row.path).is_file()
        chip = np.load(tmp_path / "s" / row.array)
        assert chip.shape == (3, 64, 64)
        red = chip[0] > 1.2  # the car body (far above the ground's range)
        dark = (chip[0] < -0.3) & (chip[2] < -0.3)  # windshield, toward the front
        ys, xs = np.nonzero(red | dark)
        assert np.ptp(xs) > 2 * np.ptp(ys)  # long axis along x
        dy, dx = np.nonzero(dark)
        assert dx.mean() > xs.mean()  # front to the right


def test_samples_cli_errors_are_one_line(painted, tmp_path, capsys):
    code = main(
        [
            "samples",
            str(painted[0]),
            "--labels",
            str(tmp_path / "nope.gpkg"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "o" / "samples.csv").exists()


def test_samples_rerun_leaves_no_stale_chip_and_no_temp(painted, tmp_path):
    """A second run with fewer chips: the folder holds exactly the chips its index lists."""
    out = tmp_path / "s"
    cfg = load_config(None, {"data.chip_size": 64})
    write_samples([str(painted[0])], str(painted[1]), None, cfg, out)
    (out / "chips" / "positive_00099.npy").write_bytes(b"from an older run with more positives")
    index = pd.read_csv(write_samples([str(painted[0])], str(painted[1]), None, cfg, out))
    listed = {*index["path"], *index["array"]}
    assert {f"chips/{p.name}" for p in (out / "chips").iterdir()} == listed
    assert sorted(p.name for p in out.iterdir()) == ["chips", "samples.csv"]


def test_samples_with_a_bowtie_negative_repairs_it(painted, tmp_path, capsys):
    """A self-intersecting negative (QGIS lets one draw it) must not end in a GEOS traceback."""
    from geodetect.labels import read_vector, write_vector

    gdf = read_vector(painted[1])
    neg = np.nonzero((gdf["label"] == "negative").to_numpy())[0][0]
    x0, y0, x1, y1 = gdf.geometry.iloc[neg].bounds
    geoms = gdf.geometry.to_numpy().copy()
    geoms[neg] = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    labels = write_vector(gdf.set_geometry(geoms), tmp_path / "bowtie.gpkg")
    argv = ["samples", str(painted[0]), "--labels", str(labels), "--out", str(tmp_path / "o")]
    assert main([*argv, "--config", str(_tiny_config(tmp_path))]) == 0
    err = capsys.readouterr().err
    assert f"feature {neg}" in err and "make_valid" in err and "Traceback" not in err
    table = pd.read_csv(tmp_path / "o" / "samples.csv")
    assert (table["label"] == "negative").sum() >= 1


def _tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("data:\n  chip_size: 64\n")
    return path


def _patch(image, known, boxes, classes, heads, focus=-1):
    from geodetect.samples import Patch

    n = image.shape[-1]
    return Patch(image.astype(np.float16), np.ones((n, n), np.uint8), known.astype(np.uint8),
                 np.asarray(boxes, float).reshape(-1, 5), np.asarray(classes, int),
                 np.asarray(heads, float), 0, (0, 0), focus)  # fmt: skip


def test_paste_copies_the_focus_object_into_known_background_with_its_label():
    """The positive a patch is centred on (not its neighbour) lands on a known pixel of the
    negative patch: its pixels copied, its box moved with them (size, angle, heading and
    class kept), its footprint known; the source and the negative are left as they were."""
    from geodetect.samples import paste_positives

    n = 64
    src_img = np.zeros((3, n, n), np.float32)
    focus = [32.0, 32.0, 20.0, 8.0, 90.0]  # a car along +x at the centre
    src_img[:, 28:36, 22:42] = 0.9
    src_img[:, 2:6, 2:6] = 0.5  # a neighbour, not to be pasted
    near = [4.0, 4.0, 4.0, 4.0, 0.0]
    src = _patch(src_img, np.ones((n, n)), [near, focus], [1, 1], [7.0, 95.0], 1)
    known = np.zeros((n, n))
    known[40:50, 10:20] = 1  # the only known spot of the negative
    neg = _patch(np.full((3, n, n), 0.1), known, np.zeros((0, 5)), [], [])
    out = paste_positives(neg, [src], np.random.default_rng(0))
    assert len(out.boxes) == 1 and out.classes.tolist() == [1]
    cx, cy = out.boxes[0, :2]
    assert 10 <= cx < 20 and 40 <= cy < 50
    assert out.boxes[0, 2:].tolist() == focus[2:] and out.headings.tolist() == [95.0]
    r0, c0 = int(cy) - 4, int(cx) - 10  # the car's 20 x 8 pixels, moved
    assert np.allclose(out.image[:, r0 : r0 + 8, c0 : c0 + 20], 0.9, atol=1e-3)
    assert (out.known[r0 : r0 + 8, c0 : c0 + 20] == 1).all()
    assert (out.image > 0.2).sum() == 3 * 20 * 8  # nothing else, not the neighbour
    assert len(neg.boxes) == 0 and float(neg.image.max()) == pytest.approx(0.1, abs=1e-3)
    nothing = _patch(np.zeros((3, n, n)), np.zeros((n, n)), np.zeros((0, 5)), [], [])
    assert paste_positives(nothing, [src], np.random.default_rng(0)) is nothing


def test_paste_rows_put_copies_side_by_side_along_the_short_axis():
    """With rows 1 every pasted object comes as 2-4 copies, side by side across its width
    (a car parked beside its twin), apart by 5-30 % of the width so none overlap, each with
    its pixels, box, class and heading; rows 0 pastes exactly what it pasted before."""
    from geodetect.geometry import rotated_iou
    from geodetect.samples import paste_positives

    n = 96
    src_img = np.zeros((3, n, n), np.float32)
    focus = [48.0, 48.0, 20.0, 8.0, 90.0]  # along +x: side by side means stacked in y
    src_img[:, 44:52, 38:58] = 0.9
    src = _patch(src_img, np.ones((n, n)), [focus], [1], [95.0], 1)
    known = np.zeros((n, n))
    known[20:24, 40:44] = 1
    neg = _patch(np.full((3, n, n), 0.1), known, np.zeros((0, 5)), [], [])
    counts = set()
    for seed in range(8):
        out = paste_positives(neg, [src], np.random.default_rng(seed), rows=1.0)
        k = len(out.boxes)
        counts.add(k)
        assert 2 <= k <= 4 and out.classes.tolist() == [1] * k
        assert out.headings.tolist() == [95.0] * k
        order = np.argsort(out.boxes[:, 1])
        b = out.boxes[order]
        assert np.allclose(b[:, 0], b[0, 0])  # same column: across the width, not along
        gaps = np.diff(b[:, 1])
        assert ((gaps >= 8 * 1.05 - 1) & (gaps <= 8 * 1.3 + 1)).all()
        assert rotated_iou(b, b)[np.triu_indices(k, 1)].max() == 0
        painted = (out.image[0] > 0.5).sum()
        assert painted == k * 20 * 8  # every copy whole, none overlapping
    assert len(counts) > 1
    # rows 0 draws only the spot, as pasting did before rows existed: the stream that
    # follows (every later chip of a recipe without rows) is unchanged
    used, fresh = np.random.default_rng(3), np.random.default_rng(3)
    zero = paste_positives(neg, [src], used, rows=0.0)
    assert len(zero.boxes) == 1
    fresh.integers(int(known.sum()))
    assert used.random() == fresh.random()
