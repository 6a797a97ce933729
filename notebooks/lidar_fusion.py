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
# # Buildings from imagery and a point cloud
#
# A flat grey roof looks like a car park from above; in a point cloud it stands 5 m above the
# ground. This notebook
#
# 1. rasterises a LAS/LAZ point cloud onto the image grid (DSM, nDSM),
# 2. trains a buildings detector three ways — RGB only, RGB + nDSM channel
#    (`configs/buildings.yaml`), and the nDSM alone (`configs/pointcloud.yaml`),
# 3. compares them on a different scene.
#
# Run it from the `notebooks/` folder of a clone (see `quickstart.ipynb` first). With the full
# settings it trains three models: about a quarter of an hour on a laptop CPU.

# %%
import os
from pathlib import Path

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from _plots import draw_boxes, legend, map_axes, show_scene

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
)

# %% tags=["parameters"]
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
WORK.mkdir(exist_ok=True)

# %% [markdown]
# ## 1 A scene with its point cloud
#
# `make_pair(..., cloud=True)` also writes a LAZ point cloud per scene (a few points per m²,
# ground classified, several returns under trees). Here 80 % of the objects are labelled, so
# the training scene has enough buildings.

# %%
train_scene, test_scene = make_pair(
    WORK / "data", seed=3, size=SIZE, cloud=True, label_fraction=0.8
)
for s in (train_scene, test_scene):
    print(s.image.name, s.cloud.name, f"{s.cloud.stat().st_size / 1e6:.1f} MB")

# %% [markdown]
# ## 2 DSM and nDSM on the image grid
#
# `rasterize_cloud` streams the cloud in chunks onto any grid: here the image's own grid, so
# every pixel gets the elevation under it. DSM = highest return per cell; nDSM = DSM − DTM,
# the height above ground, where buildings stand out at 4–12 m and cars at 1.5–2 m.
# `rasterize_file` (`geodetect rasterize`) writes the same as a GeoTIFF. White cells hold no
# point: at 0.25 m a cloud of a few points per m² leaves many cells empty; the detector reads
# the nDSM at its own GSD (0.5 m in `configs/buildings.yaml`), where the cells fill up.

# %%
grid = open_raster(train_scene.image).grid
dsm = rasterize_cloud(train_scene.cloud, grid, kind="dsm")
ndsm = rasterize_cloud(train_scene.cloud, grid, kind="ndsm")
truth = read_labels(train_scene.truth)
extent = (
    grid.transform.c,
    grid.transform.c + grid.transform.a * grid.width,
    grid.transform.f + grid.transform.e * grid.height,
    grid.transform.f,
)

fig, axes = plt.subplots(1, 3, figsize=(17, 5.5), layout="constrained")
show_scene(train_scene.image, ax=axes[0], title="image")
im = axes[1].imshow(dsm, extent=extent, cmap="terrain")
fig.colorbar(im, ax=axes[1], shrink=0.8, label="DSM (m)")
map_axes(axes[1], "DSM: highest return")
im = axes[2].imshow(ndsm, extent=extent, cmap="viridis", vmin=0, vmax=12)
fig.colorbar(im, ax=axes[2], shrink=0.8, label="nDSM (m above ground)")
map_axes(axes[2], "nDSM with the true buildings")
draw_boxes(axes[2], truth[truth["class"] == "building"], colour="white", arrows=False)


# %% [markdown]
# ## 3 Buildings-only labels
#
# The sample labels hold vehicles too. A buildings model needs only building positives (plus
# the negatives); vehicles inside negative regions then count as "not a building". The
# optional `image` field is dropped because the nDSM-only model trains on another file name.


# %%
def buildings_only(src, dst):
    """Copy a label file keeping negatives and building positives."""
    gdf = read_labels(src)
    keep = (gdf["label"] == "negative") | (gdf["class"] == "building")
    return write_vector(gdf[keep].drop(columns="image", errors="ignore"), dst)


train_labels = buildings_only(train_scene.labels, WORK / "train_buildings.gpkg")
test_truth = buildings_only(test_scene.truth, WORK / "test_buildings_truth.gpkg")
counts = read_labels(train_labels).groupby(["label", "class"], dropna=False).size()
counts.rename("features").to_frame()

# %% [markdown]
# ## 4 Three configurations
#
# * **RGB**: `configs/buildings.yaml` with `data.elevation: "off"`;
# * **RGB + nDSM**: `configs/buildings.yaml` as it is (`data.elevation: "on"`): the cloud is
#   given with `--pointcloud` and becomes a fourth channel;
# * **nDSM only**: `configs/pointcloud.yaml`, trained on nDSM GeoTIFFs made by
#   `rasterize_file(..., resolution=0.5, kind="ndsm")` (`geodetect rasterize --resolution 0.5
#   --kind ndsm`): no imagery at all.

# %%
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
        [train_scene.image],
        [train_scene.cloud],
        [test_scene.image],
        [test_scene.cloud],
    ),
    "nDSM only": ([ndsm_rasters["train"]], None, [ndsm_rasters["test"]], None),
}
pd.DataFrame({name: c.data.model_dump() for name, c in configs.items()})

# %% [markdown]
# What the fused network sees: each chip has the three colour channels and the elevation
# channel (nDSM / `data.elevation_scale`).

# %%
index = write_samples(
    [str(train_scene.image)],
    str(train_labels),
    [str(train_scene.cloud)],
    configs["RGB + nDSM"],
    WORK / "samples",
)
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
axes[1, 0].set_title("elevation channel", loc="left")
# %% [markdown]
# ## 5 Train, detect, evaluate each
#
# Each model is trained on the training scene and evaluated on the test scene against its
# building truth. The RGB + nDSM model needs the test scene's point cloud at `infer`.

# %%
results = {}
for name, config in configs.items():
    train_images, train_clouds, test_images, test_clouds = inputs[name]
    run = WORK / name.lower().replace(" + ", "_").replace(" ", "_")  # rgb, rgb_ndsm, ndsm_only
    model = train(
        [str(p) for p in train_images],
        str(train_labels),
        pointclouds=None if train_clouds is None else [str(p) for p in train_clouds],
        config=config,
        out_dir=str(run),
        device=DEVICE,
        seed=0,
    )
    detections = infer(
        model,
        [str(p) for p in test_images],
        pointclouds=None if test_clouds is None else [str(p) for p in test_clouds],
        out=run / "detections.gpkg",
        device=DEVICE,
        threshold=THRESHOLD,
    )
    results[name] = {"detections": detections, "metrics": evaluate(detections, test_truth, iou=0.5)}
    print(f"{name}: {len(gpd.read_file(detections))} detections")

# %%
columns = ["ap", "precision", "recall", "f1", "tp", "fp", "fn", "angle_error_median"]
table = pd.DataFrame(
    {name: r["metrics"]["classes"].get("building", {}) for name, r in results.items()}
).T.reindex(columns=columns)
table

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
colours = ["tab:blue", "tab:green", "tab:purple"]
a.bar(table.index, pd.to_numeric(table["ap"]).fillna(0), color=colours)
a.set(ylabel="building AP@0.5", ylim=(0, 1), title="AP on the test scene")
for (name, r), style in zip(results.items(), ["-", "--", ":"], strict=True):
    c = precision_recall_curves(r["detections"], test_truth, iou=0.5).get("building")
    if c is not None:
        b.plot(c["recall"], c["precision"], style, linewidth=2, label=name)
b.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="precision–recall")
b.legend()
# %%
truth = read_labels(test_truth)
fig, axes = plt.subplots(1, 3, figsize=(18, 6.5), layout="constrained")
for ax, (name, r) in zip(axes, results.items(), strict=True):
    show_scene(test_scene.image, ax=ax, title=name)
    truth.boundary.plot(ax=ax, color="white", linewidth=0.6)
    found = gpd.read_file(r["detections"])
    if len(found):
        draw_boxes(ax, found, colour="magenta", arrows=False)
legend(axes[0], {"truth": "white", "detection": "magenta"})

# %% [markdown]
# ## The same from the command line
#
# ```bash
# geodetect rasterize test.laz --like test.tif --out test_ndsm_on_image.tif --kind ndsm
# geodetect train train.tif --labels train_buildings.gpkg --pointcloud train.laz \
#     --config configs/buildings.yaml --out run_fused
# geodetect infer run_fused/model.pt test.tif --pointcloud test.laz --out buildings.gpkg
# geodetect evaluate buildings.gpkg test_buildings_truth.gpkg
# ```
