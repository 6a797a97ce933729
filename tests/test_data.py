"""The synthetic sample-data generator: files, CRS, classes, labels that tell the truth."""

from __future__ import annotations

import geopandas as gpd
import laspy
import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask
from shapely.geometry import Polygon

from geodetect.data import make_pair, make_sample_data, make_training_set
from geodetect.errors import CRSError, InputError


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs, ds.res, ds.bounds


def _pixels(img: np.ndarray, transform, geom) -> np.ndarray:
    """(C, N) pixel values whose centres fall inside geom."""
    inside = geometry_mask([geom], out_shape=img.shape[1:], transform=transform, invert=True)
    return img[:, inside].astype(float)


def test_image_is_a_north_up_utm_rgb_geotiff(sample_small):
    img, transform, crs, res, _ = _read(sample_small.image)
    assert crs.to_epsg() == 32633
    assert res == pytest.approx((0.25, 0.25))
    assert transform.b == 0 and transform.d == 0 and transform.e < 0
    assert img.shape == (3, 512, 512) and img.dtype == np.uint8
    assert 300_000 < transform.c < 700_000  # a plausible easting in a UTM zone
    assert img.std() > 10  # textured, not flat


@pytest.mark.parametrize(
    ("dtype", "lo", "hi"), [("uint16", 50, 4095), ("float32", 0.0, 1.0), ("uint8", 0, 255)]
)
def test_dtypes_keep_their_usual_ranges(tmp_path, dtype, lo, hi):
    sd = make_sample_data(tmp_path, size=128, seed=3, dtype=dtype, cloud=False)
    img, *_ = _read(sd.image)
    assert img.dtype == np.dtype(dtype)
    assert img.min() >= lo and img.max() <= hi
    assert img.max() > lo + 0.4 * (hi - lo)  # uses the range, not a sliver of it
    assert not sd.cloud.exists()


def test_point_cloud_matches_the_scene(sample_small):
    las = laspy.read(sample_small.cloud)
    assert las.header.parse_crs().to_epsg() == 32633
    assert las.header.version.minor == 4 and las.header.point_format.id in (6, 7)
    _, _, _, _, (left, bottom, right, top) = _read(sample_small.image)
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    assert x.min() >= left and x.max() <= right and y.min() >= bottom and y.max() <= top
    density = len(x) / ((right - left) * (top - bottom))
    assert 4 <= density <= 10
    cls = np.asarray(las.classification)
    for c in (1, 2, 5, 6):  # vehicles/confusers, ground, trees, buildings
        assert (cls == c).sum() > 0, f"no points of class {c}"
    ground = np.median(z[cls == 2])
    assert np.median(z[cls == 6]) - ground > 3.0  # roofs stand above the terrain
    assert 0.8 < np.median(z[cls == 1]) - ground < 3.0  # vehicles and boxes are low
    assert np.asarray(las.red).max() > 0  # coloured from the image


def test_truth_has_oriented_rectangles_with_headings(sample_small):
    truth = gpd.read_file(sample_small.truth)
    assert truth.crs.to_epsg() == 32633
    assert set(truth["label"]) == {"positive"}
    assert set(truth["image"]) == {"scene.tif"}
    counts = truth["class"].value_counts()
    assert counts["vehicle"] >= 5 and counts["building"] >= 1
    veh = truth[truth["class"] == "vehicle"]
    assert truth.loc[truth["class"] == "building", "heading_deg"].isna().all()
    assert ((veh.heading_deg >= 0) & (veh.heading_deg < 360)).all()
    for geom, heading in zip(veh.geometry, veh.heading_deg, strict=True):
        c = np.asarray(geom.exterior.coords)[:4]
        assert len(geom.exterior.coords) == 5
        front, back = (c[0] + c[1]) / 2, (c[2] + c[3]) / 2
        d = front - back  # map frame: heading = atan2(dx, dy), clockwise from north
        assert np.hypot(*d) == pytest.approx(np.hypot(*(c[0] - c[3])))
        assert 3.8 < np.hypot(*d) < 6.3 and 1.6 < np.hypot(*(c[1] - c[0])) < 2.3
        got = np.degrees(np.arctan2(d[0], d[1])) % 360
        assert min(abs(got - heading), 360 - abs(got - heading)) < 0.01


def test_vehicles_stand_out_from_their_surroundings(sample_small):
    img, transform, *_ = _read(sample_small.image)
    truth = gpd.read_file(sample_small.truth)
    veh = truth[truth["class"] == "vehicle"].geometry
    contrast = []
    for g in veh:
        inside = _pixels(img, transform, g.buffer(-0.2)).mean(axis=1)
        ring = _pixels(img, transform, g.buffer(1.5).difference(g.buffer(0.3))).mean(axis=1)
        contrast.append(np.linalg.norm(inside - ring))
    assert np.mean(np.asarray(contrast) > 15) >= 0.85


def _band_brightness(img, transform, geom, t0, t1):
    """Mean brightness of the strip between fractions t0..t1 of the length, from the front."""
    c = np.asarray(geom.exterior.coords)[:4]
    fl, fr, br, bl = c
    strip = [fl + (bl - fl) * t0, fr + (br - fr) * t0, fr + (br - fr) * t1, fl + (bl - fl) * t1]
    return _pixels(img, transform, Polygon(strip).buffer(-0.15)).mean()


def test_windshield_is_at_the_front(sample_small):
    """A dark band just behind the front edge, not its mirror image: the heading is visible."""
    img, transform, *_ = _read(sample_small.image)
    truth = gpd.read_file(sample_small.truth)
    veh = truth[truth["class"] == "vehicle"].geometry
    front = np.array([_band_brightness(img, transform, g, 0.05, 0.45) for g in veh])
    back = np.array([_band_brightness(img, transform, g, 0.55, 0.95) for g in veh])
    darker_front = front < back
    assert np.mean(darker_front) >= 0.8


def test_sparse_labels_never_claim_unlabelled_objects(sample_small):
    truth = gpd.read_file(sample_small.truth)
    labels = gpd.read_file(sample_small.labels)
    assert labels.crs.to_epsg() == 32633
    assert set(labels["label"]) == {"positive", "negative"}
    pos = labels[labels["label"] == "positive"]
    neg = labels[labels["label"] == "negative"]
    assert len(neg) >= 3
    labelled = np.zeros(len(truth), bool)
    for g in pos.geometry:
        hit = truth.geometry.geom_equals_exact(g, tolerance=1e-6)
        assert hit.sum() == 1, "a labelled positive is not in the truth"
        labelled |= hit.to_numpy()
    for cls in ("vehicle", "building"):
        n = (truth["class"] == cls).sum()
        k = (pos["class"] == cls).sum()
        assert 1 <= k <= n and abs(k - 0.6 * n) <= 1  # sample_small labels 60 %
    unlabelled = truth.geometry[~labelled]
    assert len(unlabelled) > 0
    assert not neg.geometry.union_all().intersects(unlabelled.union_all())
    assert pos["heading_deg"].notna().sum() == (pos["class"] == "vehicle").sum()


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = make_sample_data(tmp_path / "a", size=128, seed=5)
    b = make_sample_data(tmp_path / "b", size=128, seed=5)
    c = make_sample_data(tmp_path / "c", size=128, seed=6, cloud=False)
    ia, ib, ic = (_read(s.image)[0] for s in (a, b, c))
    assert np.array_equal(ia, ib) and not np.array_equal(ia, ic)
    ta, tb = gpd.read_file(a.truth), gpd.read_file(b.truth)
    assert len(ta) == len(tb) and ta.geometry.geom_equals_exact(tb.geometry, 0).all()
    la, lb = gpd.read_file(a.labels), gpd.read_file(b.labels)
    assert la.geometry.geom_equals_exact(lb.geometry, 0).all()
    pa, pb = laspy.read(a.cloud), laspy.read(b.cloud)
    assert np.array_equal(pa.xyz, pb.xyz) and np.array_equal(pa.classification, pb.classification)


def test_colour_cast_changes_band_means(tmp_path):
    plain = make_sample_data(tmp_path / "p", size=128, seed=2, cloud=False)
    gains = (1.2, 1.0, 0.7)
    cast = make_sample_data(tmp_path / "c", size=128, seed=2, cloud=False, colour_cast=gains)
    mp, mc = (_read(s.image)[0].reshape(3, -1).mean(axis=1) for s in (plain, cast))
    ratio = mc / mp
    assert ratio[0] > 1.1 and abs(ratio[1] - 1) < 0.02 and ratio[2] < 0.75


def test_traffic_multiplies_the_vehicles_and_keeps_them_apart(tmp_path):
    """The busy scene of the inference benchmark: ~4x the vehicles, none overlapping."""
    plain = make_sample_data(tmp_path / "p", size=512, seed=2, cloud=False)
    busy = make_sample_data(tmp_path / "b", size=512, seed=2, cloud=False, traffic=4.0)
    tp, tb = (gpd.read_file(s.truth) for s in (plain, busy))
    n_plain, n_busy = ((t["class"] == "vehicle").sum() for t in (tp, tb))
    assert 3.0 * n_plain <= n_busy <= 4.5 * n_plain
    cars = tb[tb["class"] == "vehicle"].geometry.reset_index(drop=True)
    left, right = cars.sindex.query(cars, predicate="intersects")
    assert (left == right).all()  # each vehicle touches only itself


def test_make_pair_gives_two_different_scenes(tmp_path):
    train, test = make_pair(tmp_path, size=96, cloud=False)
    assert train.image.name == "train.tif" and test.image.name == "test.tif"
    assert not np.array_equal(_read(train.image)[0], _read(test.image)[0])


def test_training_set_is_several_scenes_with_one_label_file(tmp_path):
    scenes, labels = make_training_set(tmp_path, seeds=(0, 7), size=256, cloud=False)
    assert [d.image.name for d in scenes] == ["train_0.tif", "train_7.tif"]
    assert not np.array_equal(_read(scenes[0].image)[0], _read(scenes[1].image)[0])
    merged = gpd.read_file(labels)
    parts = [gpd.read_file(d.labels) for d in scenes]
    assert len(merged) == sum(len(p) for p in parts)
    for d, part in zip(scenes, parts, strict=True):
        rows = merged[merged["image"] == d.image.name]
        assert len(rows) == len(part) and rows.geometry.union_all().equals(
            part.geometry.union_all()
        )
    with pytest.raises(InputError):
        make_training_set(tmp_path / "none", seeds=(), size=256, cloud=False)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"dtype": "int8"}, InputError),
        ({"size": 10}, InputError),
        ({"epsg": 4326}, CRSError),
        ({"label_fraction": 1.5}, InputError),
        ({"colour_cast": (1.0, 0.0, 1.0)}, InputError),
        ({"traffic": 0.0}, InputError),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, error):
    with pytest.raises(error):
        make_sample_data(tmp_path, cloud=False, **kwargs)
    assert not any(tmp_path.iterdir())


def test_negatives_cover_confusers_trees_and_roads():
    """The hard background a detector must learn: negatives sit on look-alikes, not only grass."""
    from geodetect.data import scene, truth

    rng = np.random.default_rng(0)
    layout = scene.make_layout(256.0, 256.0, rng)
    rows = truth.positive_rows(layout, "x.tif")
    negs = gpd.GeoSeries(truth.negatives(layout, truth.choose_labelled(rows, 0.4, rng), rng))
    area = negs.union_all()
    for kind in ("confuser", "tree"):
        fps = [layout.objects[i].footprint for i in layout.of_kind(kind)]
        assert any(area.intersects(fp) for fp in fps), f"no negative on a {kind}"
    assert any(area.intersects(r.polygon) for r in layout.roads)
