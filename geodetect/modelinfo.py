"""What a model file says about itself, read once into a frozen, typed value.

The model file's meta dict (DESIGN.md, "The model file") has optional keys with defaults
(older files lack `orientation_free`; a foreign config section falls back to the defaults).
Reading it ad hoc in every function repeated those defaults; `ModelInfo.from_meta` applies
them in one place. Imports no torch: the ONNX path builds one from the file's metadata_props.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from geodetect.errors import ModelError

DEFAULT_PERCENTILES = (2.0, 98.0)
DEFAULT_STATS_PIXELS = 200_000


@dataclass(frozen=True)
class ModelInfo:
    """A model's classes, inputs and saved settings (the meta dict of `load_model`, typed)."""

    classes: tuple[str, ...]
    has_front: tuple[bool, ...]  # per class: the class carries a heading
    orientation_free: tuple[bool, ...]  # per class: round objects, boxes snapped upright
    bands: tuple[int, ...]  # 1-based raster bands the network reads
    elevation: bool  # an nDSM channel follows the bands
    gsd: float  # metres per pixel the network was trained at
    normalisation: dict[str, Any] = field(default_factory=dict, hash=False)
    config: dict[str, Any] = field(default_factory=dict, hash=False)  # the training Config
    arch: dict[str, Any] = field(default_factory=dict, hash=False)
    precision: str = "fp32"  # "int8" for a quantised ONNX export
    size_scale: tuple[float, ...] = ()  # per class: factor on detected sizes (calibration)
    member_size_scale: tuple[tuple[float, ...], ...] = ()  # per member of an ensemble, per class
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str = "model") -> ModelInfo:
        """The typed view of a meta dict (a copy: later edits of `meta` do not leak in).

        ModelError naming `source` when the classes or the GSD are missing.
        """
        missing = [k for k in ("classes", "gsd") if meta.get(k) is None]
        if missing:
            raise ModelError(f"{source}: model metadata lacks {', '.join(missing)}")
        meta = copy.deepcopy(dict(meta))
        classes = tuple(str(c) for c in meta["classes"])
        n = len(classes)
        return cls(
            classes=classes,
            has_front=_flags(meta.get("has_front"), n),
            orientation_free=_flags(meta.get("orientation_free"), n),
            bands=tuple(int(b) for b in (meta.get("bands") or [1])),
            elevation=bool(meta.get("elevation")),
            gsd=float(meta["gsd"]),
            normalisation=dict(meta.get("normalisation") or {}),
            config=dict(meta.get("config") or {}),
            arch=dict(meta.get("arch") or {}),
            precision=str(meta.get("precision") or "fp32"),
            size_scale=_factors(meta.get("size_scale"), n, source),
            member_size_scale=tuple(
                _factors(f, n, source) for f in meta.get("member_size_scale") or ()
            ),
            meta=meta,
        )

    @property
    def members(self) -> int:
        """Networks in the model (an ensemble's outputs come member-major along the batch)."""
        return int(self.arch.get("members", 1))

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (the network's total stride)."""
        return int(self.arch.get("multiple", 32))

    @property
    def stats_mode(self) -> str:
        """`scene`: each scene's own colour statistics; `model`: the training set's."""
        return str(self.normalisation.get("stats") or self._data.get("stats", "scene"))

    @property
    def stats_pixels(self) -> int:
        """Pixels sampled for a scene's colour statistics."""
        return int(self._data.get("stats_pixels", DEFAULT_STATS_PIXELS))

    @property
    def percentiles(self) -> tuple[float, float]:
        """The robust range's low and high percentiles."""
        pair = self.normalisation.get("percentiles") or self._data.get("percentiles")
        lo, hi = pair or DEFAULT_PERCENTILES
        return float(lo), float(hi)

    @property
    def model_stats(self) -> dict[str, Any] | None:
        """The training set's colour statistics (for `stats: model`)."""
        return self.normalisation.get("model_stats")

    @property
    def elevation_scale(self) -> float:
        """Metres of nDSM that map to 1.0 in the elevation channel."""
        return float(self.normalisation.get("elevation_scale", 10.0))

    @property
    def _data(self) -> dict[str, Any]:
        return self.config.get("data") or {}


def _flags(values: Any, n: int) -> tuple[bool, ...]:
    """Per-class booleans, padded with False (files older than the key lack it)."""
    flags = [bool(v) for v in (values or [])][:n]
    return tuple(flags + [False] * (n - len(flags)))


def _factors(values: Any, n: int, source: str) -> tuple[float, ...]:
    """Per-class positive factors, padded with 1.0 (files older than the key lack it)."""
    factors = [float(v) for v in (values or [])][:n]
    if any(not f > 0 for f in factors):
        raise ModelError(f"{source}: model metadata size_scale {factors} must be positive")
    return tuple(factors + [1.0] * (n - len(factors)))
