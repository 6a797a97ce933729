"""transforms: rotation/flip/zoom bookkeeping of boxes and headings, colour normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geodetect import geometry, transforms
from geodetect.transforms import ChipParams, transform_chip

P = 128


def _drawn(box: np.ndarray) -> np.ndarray:
    """A (1, P, P) image with the box painted in, to compare pixels with transformed boxes."""
    poly = geometry.box_polygons(box[None])[0]
    ys, xs = np.mgrid[0:P, 0:P] + 0.5
    return shapely.contains_xy(poly, xs, ys).astype(np.float32)[None]


def _centroid(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]] + 0.5
    s = img.sum()
    return float((img * xs).sum() / s), float((img * ys).sum() / s)


@pytest.mark.parametrize("theta", [0.0, 17.0, 90.0, 133.5, 200.0, 359.0])
def test_rotating_a_chip_by_theta_shifts_the_label_angle_by_theta(theta):
    box = np.array([64.0, 64.0, 40.0, 10.0, 25.0])
    head = np.array([205.0])  # front on the long axis, pointing "backwards"
    img = _drawn(box)
    chip, _, boxes, heads = transform_chip(
        img, [np.ones((P, P), np.uint8)], box[None], head, ChipParams(rotate=theta), 96
    )
    assert boxes[0, 4] == pytest.approx((25.0 + theta) % 180.0, abs=1e-3)
    assert heads[0] == pytest.approx((205.0 + theta) % 360.0, abs=1e-3)
    assert boxes[0, 2:4] == pytest.approx([40.0, 10.0], abs=1e-3)
    # the pixels moved with the label: the painted box is where the label says, at that angle
    cx, cy = _centroid(chip[0])
    assert (cx, cy) == pytest.approx(tuple(boxes[0, :2]), abs=0.3)
    ys, xs = np.mgrid[0:96, 0:96] + 0.5
    v = np.stack([(xs - cx).ravel(), (ys - cy).ravel()]) * np.sqrt(chip[0].ravel())
    _, vec = np.linalg.eigh(v @ v.T)  # principal axis of the painted pixels
    measured = geometry.vector_angle(vec[:, -1], y_down=True) % 180.0
    assert geometry.angle_difference(measured, boxes[0, 4], period=180.0) < 1.0


def test_shift_zoom_and_mirror_keep_pixels_and_labels_together():
    box = np.array([70.3, 50.2, 30.0, 10.0, 20.0])
    head = np.array([20.0])
    img = _drawn(box)
    p = ChipParams(rotate=37.0, dx=5, dy=-4, scale=1.1, flip=True)
    chip, masks, boxes, heads = transform_chip(
        img, [np.ones((P, P), np.uint8)], box[None], head, p, 96
    )
    assert _centroid(chip[0]) == pytest.approx(tuple(boxes[0, :2]), abs=0.3)
    assert boxes[0, 2:4] == pytest.approx([33.0, 11.0], abs=1e-4)
    # rotated by 37 clockwise -> 57, then mirrored left-right -> 180 - 57
    assert boxes[0, 4] == pytest.approx(123.0, abs=1e-4)
    assert heads[0] == pytest.approx(303.0, abs=1e-4)
    assert chip[0].sum() == pytest.approx(33.0 * 11.0, rel=0.02)
    # outside the rotated patch the mask is 0 (unknown, no loss)
    assert masks[0].min() == 0 and masks[0].max() == 1


def test_a_chip_depends_on_its_own_draw_only():
    """The pipelines are built once and pinned to each chip's draw: a draw must not leak
    into the next chip (same params, same chip, whatever came before)."""
    box = np.array([60.0, 66.0, 30.0, 12.0, 10.0])
    img = _drawn(box)
    masks = [np.ones((P, P), np.uint8)]
    p = ChipParams(rotate=20.0, dx=3, dy=-2, scale=0.9, brightness=0.1, contrast=-0.1)
    first = transform_chip(img, masks, box[None], np.array([np.nan]), p, 96)
    other = ChipParams(rotate=-75.0, dx=-6, dy=7, scale=1.3, flip=True, brightness=-0.2)
    transform_chip(img, masks, box[None], np.array([np.nan]), other, 96)
    again = transform_chip(img, masks, box[None], np.array([np.nan]), p, 96)
    assert np.array_equal(first[0], again[0])
    assert np.array_equal(first[2], again[2])
    assert first[2][0, 4] == pytest.approx(30.0, abs=1e-3)  # the draw was applied: turned,
    assert first[2][0, 2:4] == pytest.approx([27.0, 10.8], abs=1e-3)  # and zoomed x0.9


def test_canonical_params_lay_the_long_axis_east_with_the_front_right():
    box = np.array([[64.0, 64.0, 30.0, 10.0, 140.0]])
    for head in (140.0, 320.0):
        p = transforms.canonical_params(box[0], head)
        _, _, b, h = transform_chip(
            _drawn(box[0]), [np.ones((P, P), np.uint8)], box, np.array([head]), p, 64
        )
        assert b[0, 4] == pytest.approx(90.0) and h[0] == pytest.approx(90.0)


def test_normalise_maps_bit_depths_to_the_same_range():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 50, 50)).astype(np.float32)
    u16 = u8 * 16.0 + 3.0  # the same scene in 12-bit
    valid = np.ones((50, 50), bool)
    valid[:5] = False
    s8 = {
        "low": [u8[b, valid].min() for b in range(3)],
        "high": [u8[b, valid].max() for b in range(3)],
    }
    s16 = {"low": [v * 16 + 3 for v in s8["low"]], "high": [v * 16 + 3 for v in s8["high"]]}
    a, b = transforms.normalise(u8, valid, s8), transforms.normalise(u16, valid, s16)
    assert np.allclose(a, b, atol=1e-5)
    assert (a[:, ~valid] == 0).all()
    assert a[:, valid].min() == pytest.approx(0.0) and a[:, valid].max() == pytest.approx(1.0)


def test_scene_stats_ignore_nodata_and_are_deterministic(tmp_path):
    import rasterio
    from affine import Affine

    data = np.full((1, 64, 64), 100, np.uint16)
    data[0, :32] = np.arange(32 * 64).reshape(32, 64) % 1000
    data[0, 40:] = 65535  # nodata
    path = tmp_path / "s.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=Affine(0.25, 0, 500000, 0, -0.25, 5e6),
        nodata=65535,
    ) as dst:
        dst.write(data)
    s1 = transforms.scene_stats(path, [1], (0.0, 100.0), 1000)
    s2 = transforms.scene_stats(path, [1], (0.0, 100.0), 1000)
    assert s1 == s2
    assert s1["high"][0] < 1000  # the nodata value never enters the range


def test_elevation_channel_scales_metres_and_blanks_holes():
    ndsm = np.array([[0.0, 5.0], [np.nan, 100.0]], np.float32)
    e = transforms.elevation_channel(ndsm, (2, 2), 10.0)
    assert e.shape == (1, 2, 2)
    assert e[0].tolist() == [[0.0, 0.5], [0.0, 5.0]]


def test_colour_jitter_keeps_the_normalised_range():
    """Values outside [0, 1] (bright roofs, deep shadows) survive the jitter, as at inference."""
    img = np.array([-0.5, 0.0, 1.0, 1.5], np.float32).reshape(1, 1, 4).repeat(4, axis=1)
    img = np.repeat(img, 3, axis=0)
    p = ChipParams(brightness=0.1)
    chip, _, _, _ = transform_chip(
        img, [np.ones((4, 4), np.uint8)], np.zeros((0, 5)), np.zeros(0), p, 4
    )
    assert chip[0, 0, 3] > 1.4 and chip[0, 0, 1] == pytest.approx(0.1, abs=1e-3)


def test_recolour_repaints_inside_the_turned_box_only_and_keeps_its_shading():
    """p=1: the pixels inside a turned box get a new mean colour with the same texture (the
    deviations from the mean are unchanged); every pixel outside is untouched. A box is
    repainted at random in the chip (the seed decides), so two seeds give two colours."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.8, (P, P, 3)).astype(np.float32)
    box = np.array([[60.0, 70.0, 40.0, 16.0, 33.0]])
    inside = _drawn(box[0])[0] > 0
    out = transforms.recolour_objects(img, box, ChipParams(recolour=1.0, recolour_seed=1), 3)
    assert np.array_equal(out[~inside], img[~inside])
    delta = out[inside] - img[inside]
    assert np.abs(delta - delta.mean(axis=0)).max() < 1e-4  # a shift: shading kept
    assert np.abs(delta.mean(axis=0)).max() > 0.01
    other = transforms.recolour_objects(img, box, ChipParams(recolour=1.0, recolour_seed=2), 3)
    assert not np.allclose(other[inside].mean(axis=0), out[inside].mean(axis=0), atol=0.01)
    assert transforms.recolour_objects(img, box, ChipParams(recolour=0.0), 3) is img


def test_recolour_leaves_the_elevation_channel_and_a_recipe_without_it_keeps_its_stream():
    """Only the colour channels are repainted (an nDSM is height, not paint); recolour 0
    draws nothing, so a recipe without it gets the chips it always got."""
    from types import SimpleNamespace

    rng = np.random.default_rng(1)
    img = rng.uniform(0.2, 0.8, (P, P, 4)).astype(np.float32)
    box = np.array([[64.0, 64.0, 30.0, 30.0, 0.0]])
    out = transforms.recolour_objects(img, box, ChipParams(recolour=1.0, recolour_seed=3), 3)
    assert np.array_equal(out[..., 3], img[..., 3])
    cfg = dict(rotate=True, flip=True, scale_jitter=0.1, colour_jitter=0.1, photometric=0.0)
    plain = transforms.draw_params(np.random.default_rng(5), SimpleNamespace(**cfg), 10)
    off = transforms.draw_params(np.random.default_rng(5), SimpleNamespace(**cfg, recolour=0.0), 10)
    on = transforms.draw_params(np.random.default_rng(5), SimpleNamespace(**cfg, recolour=0.5), 10)
    assert plain == off
    assert (on.rotate, on.dx, on.scale, on.recolour) == (plain.rotate, plain.dx, plain.scale, 0.5)
