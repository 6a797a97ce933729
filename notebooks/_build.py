"""Write the notebooks in this folder from the cell sources below, outputs stripped.

    .venv/bin/python notebooks/_build.py          # rewrite quickstart.ipynb, lidar_fusion.ipynb
    .venv/bin/python notebooks/_build.py --check  # exit 1 if a committed notebook differs

Edit the cells here, not in Jupyter, so the notebooks stay reproducible and diffs stay
readable (tests/test_notebooks.py checks that the .ipynb files match this script and runs
them top to bottom with GEODETECT_NOTEBOOK_QUICK=1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------ shared cells

HELPERS = '''\
# Plotting helpers: matplotlib only, everything drawn in the scene's map coordinates.
CLASS_COLOURS = {"vehicle": "yellow", "building": "magenta"}


def map_axes(ax, title=None):
    """Axis labels in map units and plain coordinates (no "+4.65e6" offset)."""
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=8)
    if title:
        ax.set_title(title)
    return ax


def show_scene(path, ax=None, title=None, cmap=None):
    """Draw a scene (first three bands, stretched 2-98 %; one band in `cmap`) in map coordinates."""
    if ax is None:
        ax = plt.subplots(figsize=(8, 8))[1]
    with rasterio.open(path) as src:
        data = src.read(list(range(1, min(3, src.count) + 1)), masked=True).astype("float32")
        b = src.bounds
    lo, hi = np.nanpercentile(data.filled(np.nan), [2, 98], axis=(1, 2))
    img = np.clip((data - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1)
    img = img.filled(0)
    shown = np.moveaxis(img, 0, -1) if len(img) == 3 else img[0]
    ax.imshow(shown, extent=(b.left, b.right, b.bottom, b.top), cmap=cmap)
    ax.set(xlim=(b.left, b.right), ylim=(b.bottom, b.top))
    ax.set_autoscale_on(False)  # shapes drawn later (objects on the edge) keep the scene's frame
    return map_axes(ax, title or Path(path).name)


def long_side(geom):
    """Length of an oriented rectangle (its longest edge)."""
    xy = np.asarray(geom.exterior.coords)[:5]
    return float(np.max(np.hypot(*np.diff(xy, axis=0).T)))


def draw_boxes(ax, gdf, colour=None, linewidth=1.2, arrows=True):
    """Oriented rectangles (per-class colours) and arrows to the front where heading_deg is set.

    heading_deg is clockwise from grid north, so in map coordinates (y up) the front is
    (sin h, cos h) from the centre. Arrows are one object length long, from the centre.
    """
    labels = ax.get_xlabel(), ax.get_ylabel()
    for cls, rows in gdf.groupby("class"):
        c = colour or CLASS_COLOURS.get(cls, "white")
        rows.boundary.plot(ax=ax, color=c, linewidth=linewidth)
        ax.set(xlabel=labels[0], ylabel=labels[1])  # geopandas names the CRS axes
        if not arrows or "heading_deg" not in rows:
            continue
        rows = rows[rows["heading_deg"].notna()]
        if rows.empty:
            continue
        h = np.radians(rows["heading_deg"].to_numpy(float))
        length = np.array([long_side(g) for g in rows.geometry])
        centre = rows.geometry.centroid
        ax.quiver(centre.x, centre.y, np.sin(h) * length, np.cos(h) * length, color=c,
                  angles="xy", scale_units="xy", scale=1, width=0.003, headwidth=4,
                  headlength=4, headaxislength=3.5)
    return ax


def legend(ax, entries):
    """A legend from {label: colour}."""
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(edgecolor=c, facecolor="none", label=k) for k, c in entries.items()],
              loc="lower right", fontsize=8)
'''

# ------------------------------------------------------------------------------ quickstart

QUICKSTART = [
    (
        "md",
        """\
# geodetect quickstart: label → train → detect → evaluate

This notebook walks through the main job on a generated aerial scene, with the same Python
functions the `geodetect` command line calls (`from geodetect import …`):

1. make (or open) a scene and look at its sparse labels,
2. look at the normalised positive and negative samples the network is trained on,
3. train a detector with a config file,
4. detect oriented objects, with their headings, on a *different* scene,
5. evaluate: metrics, the precision–recall curve and the errors on the map.

Run it from the `notebooks/` folder of a clone (`make venv`, then
`.venv/bin/python -m jupyter lab notebooks/`; the `[dev]` extra brings Jupyter's kernel and
matplotlib). With the full settings it takes about ten minutes on a laptop CPU (most of it
training), a minute or two on a GPU.""",
    ),
    (
        "params",
        """\
import os
from pathlib import Path

# GEODETECT_NOTEBOOK_QUICK=1 (what the test suite sets): tiny settings that only prove that
# every cell runs. Unset: settings that give a useful detector in a few minutes on a CPU.
QUICK = os.environ.get("GEODETECT_NOTEBOOK_QUICK") == "1"
TILES = (0,) if QUICK else (0, 7, 8)  # seeds of the training tiles (the demo's recipe)
SIZE = 256 if QUICK else 1448  # training tiles' side in pixels (0.25 m each)
TEST_SIZE = 256 if QUICK else 1024  # the test scene's side
LABEL_FRACTION = 0.8 if QUICK else 0.4  # share of the objects labelled (every class needs 2+)
EPOCHS = 2 if QUICK else None  # None: the config's (the benchmarked recipe)
CHIPS_PER_EPOCH = 32 if QUICK else None
WIDTH = 8 if QUICK else None  # model.width (None: the config's)
THRESHOLD = 0.001 if QUICK else None  # None: the model's own; 2 tiny epochs score < 0.05
DEVICE = "auto"  # or "cpu", "cuda", "cuda:1"
CONFIGS = Path(os.environ.get("GEODETECT_CONFIGS", "../configs"))  # the repository's configs/
WORK = Path("quickstart_out")  # everything this notebook writes goes here
WORK.mkdir(exist_ok=True)""",
    ),
    (
        "code",
        """\
import json

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio

from geodetect import (
    evaluate,
    infer,
    load_config,
    load_model,
    make_sample_data,
    make_training_set,
    precision_recall_curves,
    read_labels,
    train,
    write_samples,
)""",
    ),
    ("code", HELPERS),
    (
        "md",
        """\
## 1 A scene and its labels

`make_training_set` generates three training tiles and `make_sample_data` a *different* test
scene (another seed): RGB GeoTIFFs at 0.25 m in UTM with vehicles, buildings, trees, roads,
shadows and look-alikes (containers, skips, sheds). Each comes with its full truth; the tiles
share one file of **sparse labels**, what a person labels in napari: some of the objects as
oriented rectangles (*positives*; vehicles with `heading_deg`) and a few *negative* polygons
that hold no object, each row naming its tile in `image`. Everything else is unknown, never
assumed to be background. Several tiles teach more than one big scene of the same pixels:
each has its own light, sun and palette.

To use your own data, set `TRAIN_IMAGES`, `LABELS`, `TEST_IMAGE` and `TRUTH` to your files
(any GDAL raster; a label file as in the README).""",
    ),
    (
        "code",
        """\
tiles, LABELS = make_training_set(
    WORK / "data", seeds=TILES, size=SIZE, cloud=False, label_fraction=LABEL_FRACTION
)
test_scene = make_sample_data(WORK / "data", size=TEST_SIZE, seed=1000, cloud=False, name="test")
TRAIN_IMAGES = [tile.image for tile in tiles]
TEST_IMAGE, TRUTH = test_scene.image, test_scene.truth

for path in TRAIN_IMAGES:
    with rasterio.open(path) as src:
        print(f"{path.name}: {src.width} x {src.height} px, {src.count} bands {src.dtypes[0]}, "
              f"{src.res[0]} m/px, {src.crs}")

labels = read_labels(LABELS)
labels.groupby(["label", "class"], dropna=False).size().rename("features").to_frame()""",
    ),
    (
        "code",
        """\
ax = show_scene(TRAIN_IMAGES[0], title="a training tile and its sparse labels")
tile_labels = labels[labels["image"] == TRAIN_IMAGES[0].name]
negatives = tile_labels[tile_labels["label"] == "negative"]
negatives.plot(ax=ax, facecolor="none", edgecolor="cyan", hatch="//", linewidth=0.8)
draw_boxes(ax, tile_labels[tile_labels["label"] == "positive"])
legend(ax, {**CLASS_COLOURS, "negative": "cyan"});""",
    ),
    (
        "md",
        """\
## 2 The samples the network sees

A config file holds every setting (see `configs/default.yaml`; every key is explained there).
Dotted overrides change single keys, as `geodetect train --epochs` does.

`write_samples` (`geodetect samples`) writes the chips the trainer draws, after
normalisation: resampled to the training GSD, colours stretched per scene, positives rotated
to one canonical orientation (long axis along x, front to the right), negatives cut from the
negative regions.""",
    ),
    (
        "code",
        """\
overrides = {
    "train.epochs": EPOCHS,
    "train.chips_per_epoch": CHIPS_PER_EPOCH,
    "model.width": WIDTH,
}
config = load_config(CONFIGS / "default.yaml", overrides)
print(config.train)

index = write_samples(
    [str(p) for p in TRAIN_IMAGES], str(LABELS), None, config, WORK / "samples"
)
samples = pd.read_csv(index)
samples.groupby(["label", "class"], dropna=False).size().rename("chips").to_frame()""",
    ),
    (
        "code",
        """\
def show_chips(rows, title, n=8):
    \"\"\"A row of chip previews (PNG files listed in samples.csv).\"\"\"
    rows = rows.sample(min(n, len(rows)), random_state=0) if len(rows) else rows
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    for ax, (_, row) in zip(axes[0], rows.iterrows(), strict=False):  # fewer rows than axes
        ax.imshow(plt.imread(index.parent / row["path"]))
        ax.set_title(row["class"] if isinstance(row["class"], str) else "", fontsize=9)
    fig.suptitle(title)


show_chips(samples[samples["label"] == "positive"], "positives (canonical orientation)")
show_chips(samples[samples["label"] == "negative"], "negatives")""",
    ),
    (
        "md",
        """\
## 3 Train

`train` (`geodetect train`) writes one self-describing `model.pt` (weights, classes, bands,
GSD, normalisation, config) and `metrics.json` with the loss and the validation AP@0.5 of
held-out positives per epoch.""",
    ),
    (
        "code",
        """\
model_path = train(
    [str(p) for p in TRAIN_IMAGES],
    str(LABELS),
    config=config,
    out_dir=str(WORK / "run"),
    device=DEVICE,
    seed=0,
    progress=not QUICK,
)
history = pd.DataFrame(json.loads((WORK / "run" / "metrics.json").read_text())["epochs"])
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
a.plot(history["epoch"], history["loss"], marker="o")
a.set(xlabel="epoch", ylabel="training loss")
b.plot(history["epoch"], pd.to_numeric(history["val_mean_ap50"]), marker="o")
b.set(xlabel="epoch", ylabel="validation mean AP@0.5", ylim=(0, 1));""",
    ),
    (
        "code",
        """\
net, meta = load_model(model_path)
{k: meta[k] for k in ("classes", "has_front", "bands", "elevation", "gsd")}""",
    ),
    (
        "md",
        """\
## 4 Detect on a different scene

`infer` (`geodetect infer`) tiles the scene (tiles overlap by more than the largest object,
duplicates are merged by rotated IoU) and writes one feature per object: an oriented
rectangle in the scene's CRS with `class`, `score`, `angle_deg`, `heading_deg` (vehicles),
`length_m` and `width_m`. The arrows point where each vehicle's front faces.""",
    ),
    (
        "code",
        """\
detections_path = infer(
    model_path, [str(TEST_IMAGE)], out=WORK / "detections.gpkg", device=DEVICE, threshold=THRESHOLD
)
detections = gpd.read_file(detections_path)
print(f"{len(detections)} detections in {TEST_IMAGE.name}")
detections.drop(columns="geometry").head()""",
    ),
    (
        "code",
        """\
def busiest_spot(gdf, radius=25.0):
    \"\"\"Centre of the detection with the most neighbours within `radius` m (None if empty).\"\"\"
    if gdf.empty:
        return None
    c = np.column_stack([gdf.geometry.centroid.x, gdf.geometry.centroid.y])
    near = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1]) < radius
    return c[np.argmax(near.sum(axis=0))]


fig, (whole, zoom) = plt.subplots(1, 2, figsize=(16, 8))
show_scene(TEST_IMAGE, ax=whole, title="detections on the test scene")
draw_boxes(whole, detections)
legend(whole, CLASS_COLOURS)
show_scene(TEST_IMAGE, ax=zoom, title="zoom: arrows point where each vehicle's front faces")
draw_boxes(zoom, detections, linewidth=1.8)
spot = busiest_spot(detections[detections["class"] == "vehicle"])
if spot is not None:
    half = 30.0  # metres
    zoom.set(xlim=(spot[0] - half, spot[0] + half), ylim=(spot[1] - half, spot[1] + half))
    frame = plt.Rectangle(spot - half, 2 * half, 2 * half, fill=False, color="white", ls="--")
    whole.add_patch(frame)
fig.tight_layout()
fig.savefig(WORK / "detections.png", dpi=90, bbox_inches="tight")""",
    ),
    (
        "md",
        """\
## 5 Evaluate

`evaluate` (`geodetect evaluate`) matches detections to the test scene's truth by rotated IoU
≥ 0.5 and reports, per class, the AP and — at the score threshold with the best F1 —
precision, recall, the orientation error and the share of headings within 45°. With
`errors=…` it also writes the false positives and false negatives as two layers.""",
    ),
    (
        "code",
        """\
result = evaluate(detections_path, TRUTH, iou=0.5, errors=WORK / "errors.gpkg")
print(f"mean AP@0.5: {result['mean_ap']}")
columns = ["ap", "precision", "recall", "f1", "threshold", "tp", "fp", "fn",
           "angle_error_median", "heading_correct_rate"]
pd.DataFrame(result["classes"]).T[columns]""",
    ),
    (
        "code",
        """\
curves = precision_recall_curves(detections_path, TRUTH, iou=0.5)
fig, ax = plt.subplots(figsize=(5, 4))
for cls, c in curves.items():
    ap = "-" if c["ap"] is None else f"{c['ap']:.2f}"
    line, = ax.plot(c["recall"], c["precision"], label=f"{cls} (AP {ap})")
    best = result["classes"][cls]
    if best["recall"] is not None and best["precision"] is not None:
        ax.plot(best["recall"], best["precision"], "o", color=line.get_color())
ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
       title="precision–recall (dots: best-F1 threshold)")
ax.legend();""",
    ),
    (
        "code",
        """\
false_pos = gpd.read_file(WORK / "errors.gpkg", layer="false_positives")
false_neg = gpd.read_file(WORK / "errors.gpkg", layer="false_negatives")
print(f"{len(false_pos)} false positives, {len(false_neg)} missed objects")

fig, ax = plt.subplots(figsize=(9, 9))
show_scene(TEST_IMAGE, ax=ax, title="errors at the best-F1 threshold")
read_labels(TRUTH).boundary.plot(ax=ax, color="white", linewidth=0.6)
if len(false_pos):
    false_pos.boundary.plot(ax=ax, color="red", linewidth=1.5)
if len(false_neg):
    false_neg.boundary.plot(ax=ax, color="orange", linewidth=1.5)
legend(ax, {"truth": "white", "false positive": "red", "missed (false negative)": "orange"});""",
    ),
    (
        "md",
        """\
## The same from the command line

```bash
geodetect samples train_?.tif --labels train_labels.gpkg --config configs/default.yaml --out samples
geodetect train train_?.tif --labels train_labels.gpkg --config configs/default.yaml --out run
geodetect infer run/model.pt test.tif --out detections.gpkg
geodetect evaluate detections.gpkg test_truth.gpkg --iou 0.5 --errors errors.gpkg
```

Next: label your own scenes in napari (`docs/napari.md`), add a point cloud
(`lidar_fusion.ipynb`), or run over thousands of scenes (`docs/scaleout.md`).""",
    ),
]

# ------------------------------------------------------------------------------ lidar fusion

LIDAR = [
    (
        "md",
        """\
# Buildings from imagery and a point cloud

A flat grey roof looks like a car park from above; in a point cloud it stands 5 m above the
ground. This notebook

1. rasterises a LAS/LAZ point cloud onto the image grid (DSM, nDSM),
2. trains a buildings detector three ways — RGB only, RGB + nDSM channel
   (`configs/buildings.yaml`), and the nDSM alone (`configs/pointcloud.yaml`),
3. compares them on a different scene.

Run it from the `notebooks/` folder of a clone (see `quickstart.ipynb` first). With the full
settings it trains three models: about a quarter of an hour on a laptop CPU.""",
    ),
    (
        "params",
        """\
import os
from pathlib import Path

# GEODETECT_NOTEBOOK_QUICK=1 (what the test suite sets): tiny settings that only prove that
# every cell runs. Unset: settings that show the difference the elevation channel makes.
QUICK = os.environ.get("GEODETECT_NOTEBOOK_QUICK") == "1"
SIZE = 256 if QUICK else 2048  # scene side in pixels (0.25 m each)
EPOCHS = 2 if QUICK else None  # None: the config's (the benchmarked recipe)
CHIPS_PER_EPOCH = 32 if QUICK else None
WIDTH = 8 if QUICK else None  # model.width (None: the config's)
CHIP = 64 if QUICK else 128  # data.chip_size at 0.5 m
THRESHOLD = 0.001 if QUICK else None  # None: the model's own; 2 tiny epochs score < 0.05
DEVICE = "auto"  # or "cpu", "cuda", "cuda:1"
CONFIGS = Path(os.environ.get("GEODETECT_CONFIGS", "../configs"))  # the repository's configs/
WORK = Path("lidar_fusion_out")  # everything this notebook writes goes here
WORK.mkdir(exist_ok=True)""",
    ),
    (
        "code",
        """\
import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio

from geodetect import (
    evaluate,
    infer,
    load_config,
    make_pair,
    open_raster,
    precision_recall_curves,
    rasterize_cloud,
    rasterize_file,
    read_labels,
    train,
    write_samples,
    write_vector,
)""",
    ),
    ("code", HELPERS),
    (
        "md",
        """\
## 1 A scene with its point cloud

`make_pair(..., cloud=True)` also writes a LAZ point cloud per scene (a few points per m²,
ground classified, several returns under trees). Here 80 % of the objects are labelled, so
the training scene has enough buildings.""",
    ),
    (
        "code",
        """\
train_scene, test_scene = make_pair(
    WORK / "data", seed=3, size=SIZE, cloud=True, label_fraction=0.8
)
for s in (train_scene, test_scene):
    print(s.image.name, s.cloud.name, f"{s.cloud.stat().st_size / 1e6:.1f} MB")""",
    ),
    (
        "md",
        """\
## 2 DSM and nDSM on the image grid

`rasterize_cloud` streams the cloud in chunks onto any grid: here the image's own grid, so
every pixel gets the elevation under it. DSM = highest return per cell; nDSM = DSM − DTM,
the height above ground, where buildings stand out at 4–12 m and cars at 1.5–2 m.
`rasterize_file` (`geodetect rasterize`) writes the same as a GeoTIFF. White cells hold no
point: at 0.25 m a cloud of a few points per m² leaves many cells empty; the detector reads
the nDSM at its own GSD (0.5 m in `configs/buildings.yaml`), where the cells fill up.""",
    ),
    (
        "code",
        """\
grid = open_raster(train_scene.image).grid
dsm = rasterize_cloud(train_scene.cloud, grid, kind="dsm")
ndsm = rasterize_cloud(train_scene.cloud, grid, kind="ndsm")
truth = read_labels(train_scene.truth)
extent = (grid.transform.c, grid.transform.c + grid.transform.a * grid.width,
          grid.transform.f + grid.transform.e * grid.height, grid.transform.f)

fig, axes = plt.subplots(1, 3, figsize=(17, 5.5), layout="constrained")
show_scene(train_scene.image, ax=axes[0], title="image")
im = axes[1].imshow(dsm, extent=extent, cmap="terrain")
fig.colorbar(im, ax=axes[1], shrink=0.8, label="DSM (m)")
map_axes(axes[1], "DSM: highest return")
im = axes[2].imshow(ndsm, extent=extent, cmap="viridis", vmin=0, vmax=12)
fig.colorbar(im, ax=axes[2], shrink=0.8, label="nDSM (m above ground)")
map_axes(axes[2], "nDSM with the true buildings")
draw_boxes(axes[2], truth[truth["class"] == "building"], colour="white", arrows=False);""",
    ),
    (
        "md",
        """\
## 3 Buildings-only labels

The sample labels hold vehicles too. A buildings model needs only building positives (plus
the negatives); vehicles inside negative regions then count as "not a building". The
optional `image` field is dropped because the nDSM-only model trains on another file name.""",
    ),
    (
        "code",
        """\
def buildings_only(src, dst):
    \"\"\"Copy a label file keeping negatives and building positives.\"\"\"
    gdf = read_labels(src)
    keep = (gdf["label"] == "negative") | (gdf["class"] == "building")
    return write_vector(gdf[keep].drop(columns="image", errors="ignore"), dst)


train_labels = buildings_only(train_scene.labels, WORK / "train_buildings.gpkg")
test_truth = buildings_only(test_scene.truth, WORK / "test_buildings_truth.gpkg")
counts = read_labels(train_labels).groupby(["label", "class"], dropna=False).size()
counts.rename("features").to_frame()""",
    ),
    (
        "md",
        """\
## 4 Three configurations

* **RGB**: `configs/buildings.yaml` with `data.elevation: "off"`;
* **RGB + nDSM**: `configs/buildings.yaml` as it is (`data.elevation: "on"`): the cloud is
  given with `--pointcloud` and becomes a fourth channel;
* **nDSM only**: `configs/pointcloud.yaml`, trained on nDSM GeoTIFFs made by
  `rasterize_file(..., resolution=0.5, kind="ndsm")` (`geodetect rasterize --resolution 0.5
  --kind ndsm`): no imagery at all.""",
    ),
    (
        "code",
        """\
overrides = {
    "train.epochs": EPOCHS,
    "train.chips_per_epoch": CHIPS_PER_EPOCH,
    "model.width": WIDTH,
    "data.chip_size": CHIP,
}
configs = {
    "RGB": load_config(CONFIGS / "buildings.yaml", {**overrides, "data.elevation": "off"}),
    "RGB + nDSM": load_config(CONFIGS / "buildings.yaml", overrides),
    "nDSM only": load_config(CONFIGS / "pointcloud.yaml", overrides),
}
ndsm_rasters = {
    name: rasterize_file(s.cloud, WORK / f"{name}_ndsm.tif", resolution=0.5, kind="ndsm")
    for name, s in (("train", train_scene), ("test", test_scene))
}
# (training images, training clouds, test images, test clouds) per configuration
inputs = {
    "RGB": ([train_scene.image], None, [test_scene.image], None),
    "RGB + nDSM": (
        [train_scene.image], [train_scene.cloud], [test_scene.image], [test_scene.cloud]
    ),
    "nDSM only": ([ndsm_rasters["train"]], None, [ndsm_rasters["test"]], None),
}
pd.DataFrame({name: c.data.model_dump() for name, c in configs.items()})""",
    ),
    (
        "md",
        """\
What the fused network sees: each chip has the three colour channels and the elevation
channel (nDSM / `data.elevation_scale`).""",
    ),
    (
        "code",
        """\
index = write_samples([str(train_scene.image)], str(train_labels), [str(train_scene.cloud)],
                      configs["RGB + nDSM"], WORK / "samples")
chips = pd.read_csv(index)
positives = chips[chips["label"] == "positive"].head(4)
fig, axes = plt.subplots(2, 4, figsize=(10, 5), squeeze=False)
for ax in axes.ravel():
    ax.axis("off")
for k, (_, row) in enumerate(positives.iterrows()):
    chip = np.load(index.parent / row["array"])  # (C, H, W) float32: R, G, B, elevation
    axes[0, k].imshow(np.clip(np.moveaxis(chip[:3], 0, -1), 0, 1))
    axes[1, k].imshow(chip[3], cmap="viridis", vmin=0, vmax=1.2)
axes[0, 0].set_title("RGB channels", loc="left")
axes[1, 0].set_title("elevation channel", loc="left");""",
    ),
    (
        "md",
        """\
## 5 Train, detect, evaluate each

Each model is trained on the training scene and evaluated on the test scene against its
building truth. The RGB + nDSM model needs the test scene's point cloud at `infer`.""",
    ),
    (
        "code",
        """\
results = {}
for name, config in configs.items():
    train_images, train_clouds, test_images, test_clouds = inputs[name]
    run = WORK / name.lower().replace(" + ", "_").replace(" ", "_")  # rgb, rgb_ndsm, ndsm_only
    model = train([str(p) for p in train_images], str(train_labels),
                  pointclouds=None if train_clouds is None else [str(p) for p in train_clouds],
                  config=config, out_dir=str(run), device=DEVICE, seed=0)
    detections = infer(model, [str(p) for p in test_images],
                       pointclouds=None if test_clouds is None else [str(p) for p in test_clouds],
                       out=run / "detections.gpkg", device=DEVICE, threshold=THRESHOLD)
    results[name] = {"detections": detections, "metrics": evaluate(detections, test_truth, iou=0.5)}
    print(f"{name}: {len(gpd.read_file(detections))} detections")""",
    ),
    (
        "code",
        """\
columns = ["ap", "precision", "recall", "f1", "tp", "fp", "fn", "angle_error_median"]
table = pd.DataFrame(
    {name: r["metrics"]["classes"].get("building", {}) for name, r in results.items()}
).T.reindex(columns=columns)
table""",
    ),
    (
        "code",
        """\
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
colours = ["tab:blue", "tab:green", "tab:purple"]
a.bar(table.index, pd.to_numeric(table["ap"]).fillna(0), color=colours)
a.set(ylabel="building AP@0.5", ylim=(0, 1), title="AP on the test scene")
for (name, r), style in zip(results.items(), ["-", "--", ":"], strict=True):
    c = precision_recall_curves(r["detections"], test_truth, iou=0.5).get("building")
    if c is not None:
        b.plot(c["recall"], c["precision"], style, linewidth=2, label=name)
b.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="precision–recall")
b.legend();""",
    ),
    (
        "code",
        """\
truth = read_labels(test_truth)
fig, axes = plt.subplots(1, 3, figsize=(18, 6.5), layout="constrained")
for ax, (name, r) in zip(axes, results.items(), strict=True):
    show_scene(test_scene.image, ax=ax, title=name)
    truth.boundary.plot(ax=ax, color="white", linewidth=0.6)
    found = gpd.read_file(r["detections"])
    if len(found):
        draw_boxes(ax, found, colour="magenta", arrows=False)
legend(axes[0], {"truth": "white", "detection": "magenta"});""",
    ),
    (
        "md",
        """\
## The same from the command line

```bash
geodetect rasterize test.laz --like test.tif --out test_ndsm_on_image.tif --kind ndsm
geodetect train train.tif --labels train_buildings.gpkg --pointcloud train.laz \\
    --config configs/buildings.yaml --out run_fused
geodetect infer run_fused/model.pt test.tif --pointcloud test.laz --out buildings.gpkg
geodetect evaluate buildings.gpkg test_buildings_truth.gpkg
```""",
    ),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "lidar_fusion.ipynb": LIDAR}


def build(cells: list[tuple[str, str]], stem: str) -> nbformat.NotebookNode:
    """A notebook with stable cell ids (so rebuilding changes nothing) and no outputs."""
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        if kind == "md":
            cell = new_markdown_cell(source)
        else:
            cell = new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
        cell.id = f"{stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The .ipynb text of one notebook."""
    nb = build(NOTEBOOKS[name], Path(name).stem.replace("_", "-"))
    return nbformat.writes(nb) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run notebooks/_build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
