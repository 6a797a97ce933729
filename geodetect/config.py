"""One typed configuration schema. YAML files in configs/ are instances of `Config`.

Unknown keys are errors (extra="forbid") so a typo in a YAML file never passes silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from geodetect.errors import InputError


class _Section(BaseModel):
    # NaN and infinity pass every `gt`/`le` bound in YAML (.nan, .inf): refuse them outright
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Percent = Annotated[float, Field(ge=0, le=100)]  # a percentile, e.g. of a band's values


class DataConfig(_Section):
    """How chips are cut from scenes and normalised."""

    gsd: float | None = Field(
        None,
        gt=0,
        description="training ground sample distance (metres/px); None: the scenes' median GSD",
    )
    chip_size: int = Field(128, ge=32, le=1024, description="training chip side in pixels at `gsd`")
    bands: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        min_length=1,
        description="1-based raster bands to use; None: the first 3 (or all if fewer)",
    )
    elevation: Literal["auto", "on", "off"] = Field(
        "auto", description="add the nDSM channel: auto = when point clouds are given"
    )
    stats: Literal["scene", "model"] = Field(
        "scene",
        description="colour statistics at inference: per scene (robust to casts) or the model's",
    )
    percentiles: tuple[Percent, Percent] = Field(
        (2.0, 98.0), description="robust per-band range for colour normalisation"
    )
    stats_pixels: int = Field(
        200_000, ge=1000, description="pixels sampled per scene for band statistics"
    )
    elevation_scale: float = Field(
        10.0, gt=0, description="nDSM metres that map to 1.0 in the elevation channel"
    )

    @field_validator("percentiles")
    @classmethod
    def _low_below_high(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"must be [low, high] with low < high, e.g. [2, 98]; got {list(v)}")
        return v

    @field_validator("bands")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"lists a band twice: {v}")
        return v


PRESETS = {"cpu": (16, 1), "gpu": (48, 2)}  # (width, depth)


class ModelConfig(_Section):
    """The CNN."""

    arch: Literal["geonet"] = Field("geonet", description="network family")
    width: int = Field(16, ge=8, le=256, description="base channel count")
    depth: int = Field(
        1, ge=1, le=4, description="residual blocks per deep stage of the built-in backbone"
    )
    preset: Literal["cpu", "gpu"] | None = Field(
        None, description="capacity preset (cpu: width 16 depth 1; gpu: width 48 depth 2)"
    )
    backbone: Literal["none", "resnet18", "resnet34"] = Field(
        "none", description="torchvision backbone instead of the small built-in one"
    )
    pretrained: str | None = Field(
        None,
        description="local backbone weights: a `geodetect pretrain` file or a torchvision .pth",
    )
    members: int = Field(
        1,
        ge=1,
        le=8,
        description="networks trained apart (seeds seed, seed+1, ...) whose detections are "
        "fused at inference, as TTA passes are: N times the training and inference time",
    )
    orientation_free: Literal["auto"] | list[str] = Field(
        "auto",
        description="classes without orientation (axis-aligned output); auto: classes whose "
        "positives are all axis-aligned rectangles without a heading",
    )

    @property
    def capacity(self) -> tuple[int, int]:
        """(width, depth) after the preset."""
        return PRESETS[self.preset] if self.preset else (self.width, self.depth)


class TrainConfig(_Section):
    """The training loop."""

    epochs: int = Field(60, ge=1, description="passes over `chips_per_epoch` chips")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0, description="AdamW peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(1e-4, ge=0)
    chips_per_epoch: int = Field(768, ge=1, description="random chips drawn per epoch")
    negative_fraction: float = Field(
        0.5, ge=0, lt=1, description="share of chips centred in negative regions"
    )
    hard_negative_weight: float = Field(
        5.0, ge=1, description="oversampling of confusers inside negatives"
    )
    paste: float = Field(
        0.5,
        ge=0,
        le=1,
        description="probability that a negative chip gets 1-3 training positives pasted in "
        "(each object on background that is known to hold nothing else)",
    )
    paste_rows: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that a pasted positive comes as a row of 2-4 copies side by "
        "side (parked cars, a closed stand of crowns: neighbours that touch)",
    )
    val_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of positives held out for validation"
    )
    rotate: bool = Field(True, description="random rotation augmentation (any angle)")
    flip: bool = Field(
        True, description="random mirror augmentation (aerial views have no handedness)"
    )
    scale_jitter: float = Field(
        0.1, ge=0, le=0.8, description="random zoom of +-this fraction around the training GSD"
    )
    colour_jitter: float = Field(
        0.1, ge=0, lt=1, description="random brightness/contrast change of +-this fraction"
    )
    photometric: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability of each sensor/photometric change (hue/saturation, blur, "
        "noise, JPEG, shadow) per chip",
    )
    recolour: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that a positive is repainted (new mean colour, shading "
        "kept) per chip: cars and roofs come in colours the labels may not show",
    )
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    member_processes: int = Field(
        0,
        ge=0,
        description="with model.members > 1 on a CPU: members trained at once, one process "
        "each, the torch threads shared out (0: all of them)",
    )
    amp: bool = Field(True, description="mixed precision on CUDA")


class InferConfig(_Section):
    """Detection over whole scenes."""

    tile: int = Field(1024, ge=64, description="tile side in pixels at the model GSD")
    overlap: int = Field(
        128, ge=0, description="tile overlap in pixels; must exceed the largest object"
    )
    batch_size: int = Field(1, ge=1, description="tiles per forward pass")
    threshold: float = Field(0.3, ge=0, le=1, description="minimum score kept")
    nms_iou: float = Field(0.3, ge=0, le=1, description="rotated-IoU for merging duplicates")
    tta: bool = Field(False, description="rotated/flipped passes fused")


class PretrainConfig(_Section):
    """`geodetect pretrain`: self-supervised backbone from unlabelled scenes."""

    epochs: int = Field(20, ge=1, description="passes over `chips_per_epoch` view pairs")
    batch_size: int = Field(32, ge=2, description="view pairs per step (the contrast set)")
    chips_per_epoch: int = Field(512, ge=2, description="view pairs drawn per epoch")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    temperature: float = Field(0.2, gt=0, description="NT-Xent softmax temperature")


class Config(_Section):
    """The whole configuration; every key has a documented default."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    pretrain: PretrainConfig = PretrainConfig()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or the defaults) and apply dotted overrides like {"train.epochs": 5}."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise InputError(f"{p}: not a UTF-8 text file; save the config as UTF-8") from None
        except yaml.YAMLError as exc:
            raise InputError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{p}: a config is a mapping of sections (data, model, train, infer)")
        for name, section in list(raw.items()):
            if section is None:  # `train:` with nothing under it: the section's defaults
                raw[name] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                raise InputError(f"{path}: section '{part}' is not a mapping of keys")
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        src = f"{path}: " if path else ""
        raise InputError(f"{src}config key '{where}': {first['msg']}") from None


def dump_config(config: Config) -> dict[str, Any]:
    """Plain-data form, as saved next to a run and inside the model file."""
    return config.model_dump(mode="json")
