# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # geodetect quickstart: label → train → detect → evaluate
#
# This notebook walks through the main job on a generated aerial scene, with the same Python
# functions the `geodetect` command line calls (`from geodetect import …`):
#
# 1. make (or open) a scene and look at its sparse labels,
# 2. look at the normalised positive and negative samples the network is trained on,
# 3. train a detector with a config file,
# 4. detect oriented objects, with their headings, on a *different* scene,
# 5. evaluate: metrics, the precision–recall curve and the errors on the map.
#
# Run it from the `notebooks/` folder of a clone (`make venv`, then
# `.venv/bin/python -m jupyter lab notebooks/`; the `[dev]` extra brings Jupyter's kernel and
# matplotlib). With the full settings it takes about ten minutes on a laptop CPU (most of it
# training), a minute or two on a GPU.

# %%
import json
import os
from pathlib import Path

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio
from _plots import CLASS_COLOURS, draw_boxes, legend, show_scene

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
)

# %% tags=["parameters"]
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
WORK.mkdir(exist_ok=True)

# %% [markdown]
# ## 1 A scene and its labels
#
# `make_training_set` generates three training tiles and `make_sample_data` a *different* test
# scene (another seed): RGB GeoTIFFs at 0.25 m in UTM with vehicles, buildings, trees, roads,
# shadows and look-alikes (containers, skips, sheds). Each comes with its full truth; the tiles
# share one file of **sparse labels**, what a person labels in napari: some of the objects as
# oriented rectangles (*positives*; vehicles with `heading_deg`) and a few *negative* polygons
# that hold no object, each row naming its tile in `image`. Everything else is unknown, never
# assumed to be background. Several tiles teach more than one big scene of the same pixels:
# each has its own light, sun and palette.
#
# To use your own data, set `TRAIN_IMAGES`, `LABELS`, `TEST_IMAGE` and `TRUTH` to your files
# (any GDAL raster; a label file as in the README).

# %%
tiles, LABELS = make_training_set(
    WORK / "data", seeds=TILES, size=SIZE, cloud=False, label_fraction=LABEL_FRACTION
)
test_scene = make_sample_data(WORK / "data", size=TEST_SIZE, seed=1000, cloud=False, name="test")
TRAIN_IMAGES = [tile.image for tile in tiles]
TEST_IMAGE, TRUTH = test_scene.image, test_scene.truth

for path in TRAIN_IMAGES:
    with rasterio.open(path) as src:
        print(
            f"{path.name}: {src.width} x {src.height} px, {src.count} bands {src.dtypes[0]}, "
            f"{src.res[0]} m/px, {src.crs}"
        )

labels = read_labels(LABELS)
labels.groupby(["label", "class"], dropna=False).size().rename("features").to_frame()

# %%
ax = show_scene(TRAIN_IMAGES[0], title="a training tile and its sparse labels")
tile_labels = labels[labels["image"] == TRAIN_IMAGES[0].name]
negatives = tile_labels[tile_labels["label"] == "negative"]
negatives.plot(ax=ax, facecolor="none", edgecolor="cyan", hatch="//", linewidth=0.8)
draw_boxes(ax, tile_labels[tile_labels["label"] == "positive"])
legend(ax, {**CLASS_COLOURS, "negative": "cyan"})
# %% [markdown]
# ## 2 The samples the network sees
#
# A config file holds every setting (see `configs/default.yaml`; every key is explained there).
# Dotted overrides change single keys, as `geodetect train --epochs` does.
#
# `write_samples` (`geodetect samples`) writes the chips the trainer draws, after
# normalisation: resampled to the training GSD, colours stretched per scene, positives rotated
# to one canonical orientation (long axis along x, front to the right), negatives cut from the
# negative regions.

# %%
overrides = {
    "train.epochs": EPOCHS,
    "train.chips_per_epoch": CHIPS_PER_EPOCH,
    "model.width": WIDTH,
}
config = load_config(CONFIGS / "default.yaml", overrides)
print(config.train)

index = write_samples([str(p) for p in TRAIN_IMAGES], str(LABELS), None, config, WORK / "samples")
samples = pd.read_csv(index)
samples.groupby(["label", "class"], dropna=False).size().rename("chips").to_frame()


# %%
def show_chips(rows, title, n=8):
    """A row of chip previews (PNG files listed in samples.csv)."""
    rows = rows.sample(min(n, len(rows)), random_state=0) if len(rows) else rows
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    for ax, (_, row) in zip(axes[0], rows.iterrows(), strict=False):  # fewer rows than axes
        ax.imshow(plt.imread(index.parent / row["path"]))
        ax.set_title(row["class"] if isinstance(row["class"], str) else "", fontsize=9)
    fig.suptitle(title)


show_chips(samples[samples["label"] == "positive"], "positives (canonical orientation)")
show_chips(samples[samples["label"] == "negative"], "negatives")

# %% [markdown]
# ## 3 Train
#
# `train` (`geodetect train`) writes one self-describing `model.pt` (weights, classes, bands,
# GSD, normalisation, config) and `metrics.json` with the loss and the validation AP@0.5 of
# held-out positives per epoch.

# %%
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
b.set(xlabel="epoch", ylabel="validation mean AP@0.5", ylim=(0, 1))
# %%
net, meta = load_model(model_path)
{k: meta[k] for k in ("classes", "has_front", "bands", "elevation", "gsd")}

# %% [markdown]
# ## 4 Detect on a different scene
#
# `infer` (`geodetect infer`) tiles the scene (tiles overlap by more than the largest object,
# duplicates are merged by rotated IoU) and writes one feature per object: an oriented
# rectangle in the scene's CRS with `class`, `score`, `angle_deg`, `heading_deg` (vehicles),
# `length_m` and `width_m`. The arrows point where each vehicle's front faces.

# %%
detections_path = infer(
    model_path, [str(TEST_IMAGE)], out=WORK / "detections.gpkg", device=DEVICE, threshold=THRESHOLD
)
detections = gpd.read_file(detections_path)
print(f"{len(detections)} detections in {TEST_IMAGE.name}")
detections.drop(columns="geometry").head()


# %%
def busiest_spot(gdf, radius=25.0):
    """Centre of the detection with the most neighbours within `radius` m (None if empty)."""
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
fig.savefig(WORK / "detections.png", dpi=90, bbox_inches="tight")

# %% [markdown]
# ## 5 Evaluate
#
# `evaluate` (`geodetect evaluate`) matches detections to the test scene's truth by rotated IoU
# ≥ 0.5 and reports, per class, the AP and — at the score threshold with the best F1 —
# precision, recall, the orientation error and the share of headings within 45°. With
# `errors=…` it also writes the false positives and false negatives as two layers.

# %%
result = evaluate(detections_path, TRUTH, iou=0.5, errors=WORK / "errors.gpkg")
print(f"mean AP@0.5: {result['mean_ap']}")
columns = [
    "ap",
    "precision",
    "recall",
    "f1",
    "threshold",
    "tp",
    "fp",
    "fn",
    "angle_error_median",
    "heading_correct_rate",
]
pd.DataFrame(result["classes"]).T[columns]

# %%
curves = precision_recall_curves(detections_path, TRUTH, iou=0.5)
fig, ax = plt.subplots(figsize=(5, 4))
for cls, c in curves.items():
    ap = "-" if c["ap"] is None else f"{c['ap']:.2f}"
    (line,) = ax.plot(c["recall"], c["precision"], label=f"{cls} (AP {ap})")
    best = result["classes"][cls]
    if best["recall"] is not None and best["precision"] is not None:
        ax.plot(best["recall"], best["precision"], "o", color=line.get_color())
ax.set(
    xlabel="recall",
    ylabel="precision",
    xlim=(0, 1.02),
    ylim=(0, 1.02),
    title="precision–recall (dots: best-F1 threshold)",
)
ax.legend()
# %%
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
legend(ax, {"truth": "white", "false positive": "red", "missed (false negative)": "orange"})

# %% [markdown]
# ## The same from the command line
#
# ```bash
# geodetect samples train_?.tif --labels train_labels.gpkg --config configs/default.yaml \
#     --out samples
# geodetect train train_?.tif --labels train_labels.gpkg --config configs/default.yaml --out run
# geodetect infer run/model.pt test.tif --out detections.gpkg
# geodetect evaluate detections.gpkg test_truth.gpkg --iou 0.5 --errors errors.gpkg
# ```
#
# Next: label your own scenes in napari (`docs/napari.md`), add a point cloud
# (`lidar_fusion.ipynb`), or run over thousands of scenes (`docs/scaleout.md`).
