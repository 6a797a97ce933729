"""The only albumentations user: colour, scale and rotation normalisation and augmentation.

Why each step exists:
- colour: scenes differ in bit depth (uint8/uint16/float) and in light; a robust per-band
  range (percentiles, nodata excluded) per scene maps all of them to about [0, 1], so the
  network never sees a bit depth or a colour cast.
- scale: every chip is read at one ground sample distance (the reading side, raster.py, does
  the resampling); a small random zoom covers what resampling cannot.
- rotation: positives are cut in a canonical orientation for people to inspect, and training
  chips are rotated by known random angles (any angle) so the network learns to read the
  orientation instead of memorising one.

Boxes travel through albumentations as their four corners (keypoints): the corners of a
rotated, scaled, mirrored rectangle are still a rectangle, and the corner order keeps the
front, so angle and heading bookkeeping is exact. Albumentations' keypoints use pixel-index
coordinates (pixel centres on integers); our pixel frame has centres at +0.5, hence the shift.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geodetect import geometry

if TYPE_CHECKING:  # imported where used: `infer` normalises without it (5 s of process start)
    import albumentations as A

LOW, SPAN = -0.5, 2.0  # normalised values live in [LOW, LOW + SPAN]; the robust range is [0, 1]


# ------------------------------------------------------------------------------ colour


def percentiles_of(config_or_pair: Any) -> tuple[float, float]:
    """The percentile pair from a Config, a DataConfig, or a plain pair (a model's:
    `ModelInfo.percentiles`)."""
    data = getattr(config_or_pair, "data", config_or_pair)
    if hasattr(data, "percentiles"):
        return tuple(data.percentiles)  # type: ignore[return-value]
    if config_or_pair is None:
        return (2.0, 98.0)
    return tuple(config_or_pair)  # type: ignore[arg-type]


def scene_stats(
    path: str | Path, bands: list[int], config_or_pair: Any = None, max_pixels: int = 200_000
) -> dict[str, Any]:
    """Robust per-band range of a scene: {"low", "high", "percentiles", "pixels"}.

    From overviews or a seeded sample of windows (bandstats.sample_pixels), nodata excluded, so
    it costs the same for a 1 Mpx and a 1 Gpx scene and is the same every run.
    """
    from geodetect.bandstats import sample_pixels
    from geodetect.errors import InputError

    lo_p, hi_p = percentiles_of(config_or_pair)
    values = sample_pixels(path, bands, max_pixels=max_pixels, seed=0)
    if values.shape[1] == 0:
        raise InputError(f"{path}: has no valid pixels (all nodata)")
    low = np.percentile(values, lo_p, axis=1)
    high = np.percentile(values, hi_p, axis=1)
    high = np.where(high - low > 1e-6, high, low + 1.0)  # a constant band maps to 0
    return {
        "low": [float(v) for v in low],
        "high": [float(v) for v in high],
        "percentiles": [float(lo_p), float(hi_p)],
        "pixels": int(values.shape[1]),
    }


def mean_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Training-set statistics (mean of the scenes'), saved for `stats: model` inference."""
    return {
        "low": np.mean([s["low"] for s in stats], axis=0).tolist(),
        "high": np.mean([s["high"] for s in stats], axis=0).tolist(),
        "percentiles": stats[0]["percentiles"],
    }


def normalise(data: np.ndarray, valid: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """(C, H, W) raw values -> float32 with the band's robust range at [0, 1]; nodata -> 0."""
    low = np.asarray(stats["low"], np.float32)[:, None, None]
    high = np.asarray(stats["high"], np.float32)[:, None, None]
    # one new array, then in place: a 1024² tile is 12 MB and this runs on every tile
    out = np.subtract(data, low, dtype=np.float32)
    out /= high - low
    np.clip(out, LOW, LOW + SPAN, out=out)
    if not valid.all():
        out[:, ~valid] = 0.0
    return out


def elevation_channel(ndsm: np.ndarray | None, shape: tuple[int, int], scale: float) -> np.ndarray:
    """nDSM metres -> (1, H, W) float32 (`scale` metres = 1.0), no points -> 0."""
    if ndsm is None:
        return np.zeros((1, *shape), np.float32)
    e = np.nan_to_num(ndsm.astype(np.float32) / scale, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(e, 0.0, 5.0)[None]


def prepare_input(
    data: np.ndarray,
    valid: np.ndarray,
    ndsm: np.ndarray | None,
    stats: dict[str, Any],
    elevation_scale: float | None = None,
) -> np.ndarray:
    """A network input (C', H, W) float32 from raw bands, exactly as in training; the nDSM
    channel follows when the model reads elevation (`elevation_scale` metres = 1.0)."""
    x = normalise(data, valid, stats)
    if elevation_scale is not None:
        x = np.concatenate([x, elevation_channel(ndsm, valid.shape, elevation_scale)], axis=0)
    return np.ascontiguousarray(x, np.float32)


# ------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class ChipParams:
    """One chip's random draw; explicit so a seed fully determines the training data."""

    rotate: float = 0.0  # degrees clockwise
    dx: float = 0.0  # translation in pixels after rotation
    dy: float = 0.0
    scale: float = 1.0
    flip: bool = False  # mirror left-right after the affine
    brightness: float = 0.0
    contrast: float = 0.0
    sensor: float = 0.0  # probability of each sensor/photometric op (0: none)
    sensor_seed: int = 0
    recolour: float = 0.0  # probability that an object is repainted (0: none)
    recolour_seed: int = 0


def draw_params(rng: np.random.Generator, cfg: Any, max_shift: float) -> ChipParams:
    """Random ChipParams from a TrainConfig (rotation any angle, shift within `max_shift`)."""
    s = float(cfg.scale_jitter)
    c = float(cfg.colour_jitter)
    sensor = float(getattr(cfg, "photometric", 0.0))
    params = ChipParams(
        rotate=float(rng.uniform(0.0, 360.0)) if cfg.rotate else 0.0,
        dx=float(rng.uniform(-max_shift, max_shift)),
        dy=float(rng.uniform(-max_shift, max_shift)),
        scale=float(rng.uniform(1.0 - s, 1.0 + s)),
        flip=bool(cfg.flip and rng.random() < 0.5),
        brightness=float(rng.uniform(-c, c)),
        contrast=float(rng.uniform(-c, c)),
    )
    if sensor > 0:  # drawn last, so recipes without it keep their random stream
        params = replace(params, sensor=sensor, sensor_seed=int(rng.integers(2**31)))
    paint = float(getattr(cfg, "recolour", 0.0))
    if paint > 0:  # after sensor: recipes without either keep their random stream
        params = replace(params, recolour=paint, recolour_seed=int(rng.integers(2**31)))
    return params


def recolour_objects(
    img: np.ndarray, boxes: np.ndarray, p: ChipParams, colour_channels: int
) -> np.ndarray:
    """Repaint objects (HWC chip, boxes in its frame): each with probability p.recolour gets
    a new mean colour, its shading and texture kept.

    Why: cars and roofs come in any paint; a user who labels ten cars labels three or four
    colours, and a network that never saw a red car misses red cars (with 10 labelled
    vehicles, a third of the unseen ones were missed, most of them in colours no label had).
    Half the new colours are greys (white to black, the commonest paints), half any colour.
    """
    if p.recolour <= 0 or not len(boxes) or colour_channels < 1:
        return img
    rng = np.random.default_rng(p.recolour_seed)
    h, w = img.shape[:2]
    out = None
    for b in np.asarray(boxes, np.float64):
        if rng.random() >= p.recolour:
            continue
        grey = rng.random() < 0.5
        target = np.full(colour_channels, rng.random()) if grey else rng.random(colour_channels)
        inside = box_pixels(b, h, w)
        if inside is None:
            continue
        sub, mask = inside
        out = img.copy() if out is None else out
        px = out[sub][..., :colour_channels]  # a view: written in place
        shift = (target - px[mask].mean(axis=0)).astype(np.float32)  # robust range is [0, 1]
        px[mask] = np.clip(px[mask] + shift, LOW, LOW + SPAN)
    return img if out is None else out


def box_pixels(b: np.ndarray, h: int, w: int) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """(window, mask of its pixel centres inside the rotated box) or None off the chip."""
    half = np.hypot(b[2], b[3]) / 2
    c0, c1 = max(0, int(b[0] - half)), min(w, int(np.ceil(b[0] + half)) + 1)
    r0, r1 = max(0, int(b[1] - half)), min(h, int(np.ceil(b[1] + half)) + 1)
    if c1 <= c0 or r1 <= r0:
        return None
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5
    fwd, right = geometry.direction(b[4]), geometry.direction(b[4] + 90.0)
    dx, dy = xs - b[0], ys - b[1]
    mask = (np.abs(dx * fwd[0] + dy * fwd[1]) <= b[2] / 2) & (
        np.abs(dx * right[0] + dy * right[1]) <= b[3] / 2
    )
    return ((slice(r0, r1), slice(c0, c1)), mask) if mask.any() else None


@lru_cache(maxsize=8)
def _sensor_pipe(p: float, rgb: bool) -> A.Compose:
    """Built once per setting (building an albumentations pipeline costs more than running it);
    each chip reseeds it."""
    import albumentations as A

    return A.Compose(_sensor_ops(p, rgb), seed=0)


def _sensor_ops(p: float, rgb: bool) -> list[A.BasicTransform]:
    """Changes real cameras and orthophoto mosaics make: colour balance, defocus, sensor
    noise, compression, cloud and terrain shadows. Each is applied with probability p."""
    import albumentations as A

    ops: list[A.BasicTransform] = [
        A.GaussianBlur(blur_limit=(3, 5), p=p),
        A.GaussNoise(std_range=(0.01, 0.05), p=p),
        A.ImageCompression(quality_range=(40, 90), p=p),
        A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), p=p),
    ]
    if rgb:
        ops.insert(
            0, A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=0, p=p)
        )
    return ops


def _sensor(img: np.ndarray, p: ChipParams, colour_channels: int) -> np.ndarray:
    """Photometric/sensor augmentation of the colour channels (seeded by the chip's draw)."""
    if p.sensor <= 0 or colour_channels not in (1, 3):
        return img
    pipe = _sensor_pipe(p.sensor, colour_channels == 3)
    pipe.set_random_seed(p.sensor_seed)
    colour = np.clip((img[..., :colour_channels] - LOW) / SPAN, 0.0, 1.0)
    out = img.copy()
    res = pipe(image=np.ascontiguousarray(colour, np.float32))["image"]
    out[..., :colour_channels] = res.reshape(colour.shape) * SPAN + LOW
    return out


@lru_cache(maxsize=8)
def _geometry_pipe(out: int, flip: bool) -> A.Compose:
    """Rotate/shift/zoom, crop, mirror: built once per (chip side, mirror) and set to each
    chip's draw by `_set_affine` (building the pipeline took a third of a training chip's
    augmentation time; training runs it in one thread per process)."""
    import albumentations as A

    ops: list[A.BasicTransform] = [
        A.Affine(
            rotate=(0.0, 0.0),
            interpolation=1,
            mask_interpolation=0,
            border_mode=0,
            fill=0,
            fill_mask=0,
            p=1.0,
        ),
        A.CenterCrop(out, out),
    ]
    if flip:
        ops.append(A.HorizontalFlip(p=1.0))
    kp = A.KeypointParams(format="xy", remove_invisible=False, check_each_transform=False)
    return A.Compose(ops, keypoint_params=kp)


def _set_affine(affine: A.Affine, p: ChipParams) -> None:
    """Pin the Affine's ranges to one value each: the chip's drawn rotation, shift and zoom
    (the validated form albumentations 2.0 keeps after `__init__`)."""
    rot = -p.rotate  # albumentations turns counter-clockwise
    dx, dy = float(round(p.dx)), float(round(p.dy))
    affine.rotate = (rot, rot)
    affine.translate_px = {"x": (dx, dx), "y": (dy, dy)}
    affine.translate_percent = None
    affine.scale = {"x": (p.scale, p.scale), "y": (p.scale, p.scale)}


def _pipeline(p: ChipParams, out: int) -> A.Compose:
    """The geometry pipeline set to this chip's draw."""
    pipe = _geometry_pipe(out, bool(p.flip))
    _set_affine(pipe.transforms[0], p)
    return pipe


@lru_cache(maxsize=1)
def _jitter_op() -> A.RandomBrightnessContrast:
    """One brightness/contrast op, pinned to each chip's draw by `_colour` (cheaper than
    building one per chip)."""
    import albumentations as A

    return A.RandomBrightnessContrast(ensure_safe_range=False, p=1.0)


def _colour(img: np.ndarray, p: ChipParams, colour_channels: int) -> np.ndarray:
    """Brightness/contrast jitter on the colour channels only (never on elevation).

    Albumentations clips float images to [0, 1]; our normalised range is [-0.5, 1.5], so the
    values are mapped into [0, 1] and back around the jitter. Clipping them at 1 would teach
    the network a look that inference never shows it.
    """
    if p.brightness == 0.0 and p.contrast == 0.0:
        return img
    jitter = _jitter_op()
    jitter.brightness_limit = (p.brightness / 2, p.brightness / 2)
    jitter.contrast_limit = (p.contrast, p.contrast)
    colour = np.ascontiguousarray((img[..., :colour_channels] - LOW) / SPAN)
    img = img.copy()
    img[..., :colour_channels] = jitter(image=colour)["image"] * SPAN + LOW
    return img


def transform_chip(
    image: np.ndarray,
    masks: list[np.ndarray],
    boxes: np.ndarray,
    headings: np.ndarray,
    params: ChipParams,
    out: int,
    colour_channels: int | None = None,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Rotate/shift/zoom/mirror a patch about its centre and crop an `out` x `out` chip.

    image (C, H, W) float32; masks (H, W) uint8 (0 outside the patch after rotation); boxes
    (N, 5) and headings (N,) in the patch's pixel frame. Returns the chip (C, out, out), its
    masks, and boxes/headings in the chip frame: a rotation by θ adds θ to every angle.
    """
    hwc = np.ascontiguousarray(np.moveaxis(image, 0, -1), np.float32)
    corners = geometry.box_corners(boxes, y_down=True, headings=headings).reshape(-1, 2)
    res = _pipeline(params, out)(
        image=hwc, masks=[m.astype(np.uint8) for m in masks], keypoints=corners - 0.5
    )
    kp = np.asarray(res["keypoints"], np.float64).reshape(-1, 4, 2) + 0.5
    new_boxes, new_heads = geometry.boxes_from_corners(kp, y_down=True, rtol=1e-2)
    cc = colour_channels or hwc.shape[-1]
    chip = recolour_objects(res["image"], new_boxes, params, cc)  # paint, then the camera
    chip = _colour(chip, params, cc)
    chip = _sensor(chip, params, cc)
    new_heads = np.where(np.isfinite(np.asarray(headings, np.float64)), new_heads, np.nan)
    return np.ascontiguousarray(np.moveaxis(chip, -1, 0)), list(res["masks"]), new_boxes, new_heads


def canonical_params(box: np.ndarray, heading: float) -> ChipParams:
    """The rotation that lays a box's long axis along +x with its front (if any) to the right."""
    target = 90.0  # east in the pixel frame
    ref = heading if np.isfinite(heading) else box[4]
    return ChipParams(rotate=float(target - ref))
