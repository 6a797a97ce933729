"""`geodetect export`: a model file as ONNX (fp32, or int8 calibrated on training chips).

The .onnx carries the model file's meta (classes, bands, GSD, normalisation, config with the
infer settings) as JSON under the `geodetect` key of its metadata_props, so it is as
self-describing as model.pt: `geodetect infer model.onnx SCENE` needs nothing else.
Batch, height and width are dynamic (any tile size that is a multiple of 32).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geodetect.atomic import atomic_path, check_not_input, check_out_dir
from geodetect.errors import InputError, ModelError
from geodetect.onnxrun import META_KEY, OUTPUTS, import_ort

OPSET = 17
CALIB_TILE = 256  # calibration chip side (px at the model GSD)
CALIB_CHIPS = 48  # spread evenly over the calibration scenes' valid tiles


class _Heads(nn.Module):
    """GeoNet with its dict output as a tuple in OUTPUTS order (ONNX outputs are positional)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[name] for name in OUTPUTS)


def export_onnx(
    model: str | Path,
    out: str | Path,
    int8: bool = False,
    calibrate: list[str | Path] | None = None,
) -> Path:
    """Write `model` (a geodetect model.pt) as ONNX to `out`; int8 needs calibration scenes.

    int8 is onnxruntime's static QDQ quantisation (per-channel int8 weights, uint8
    activations) with ranges from chips of `calibrate` (the training scenes), read and
    normalised exactly as `infer` reads tiles.
    """
    from geodetect.model import fuse_conv_bn, load_model

    out = check_out_dir(out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{out}: give an output path ending in .onnx")
    check_not_input(out, [model, *(calibrate or [])])
    if int8 and not calibrate:
        raise InputError("--int8 needs --calibrate IMAGE ... (the training scenes)")
    import_ort()  # fail early with the extra's name
    try:
        import onnx
    except ImportError:
        raise ModelError("export needs onnx: pip install 'geodetect[onnx]'") from None
    net, meta = load_model(model, device="cpu")
    chips = _calibration_chips(meta, [str(c) for c in calibrate or []]) if int8 else None
    heads = _Heads(fuse_conv_bn(net.eval()))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _torch_export(heads, int(meta["arch"]["in_channels"]), fp32)
        path = fp32
        if chips is not None:
            path = Path(tmp) / "int8.onnx"
            _quantise(fp32, path, chips)
        proto = onnx.load(str(path))
        meta = {**meta, "format": "geodetect-model", "precision": "int8" if int8 else "fp32"}
        onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta, default=_plain)})
        with atomic_path(out) as dst:
            onnx.save(proto, str(dst))
    return out


def _torch_export(heads: nn.Module, channels: int, path: Path) -> None:
    x = torch.zeros(1, channels, 256, 256)
    dyn = {0: "batch", 2: "height", 3: "width"}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            heads,
            (x,),
            str(path),
            input_names=["image"],
            output_names=list(OUTPUTS),
            dynamic_axes={"image": dyn, **{n: dyn for n in OUTPUTS}},
            opset_version=OPSET,
            dynamo=False,
        )


def _calibration_chips(meta: dict, images: list[str]) -> list[np.ndarray]:
    """Normalised (1, C, 256, 256) chips at evenly spread tiles of the scenes (valid ones)."""
    from dataclasses import replace

    from geodetect.detection import read_batches
    from geodetect.modelinfo import ModelInfo
    from geodetect.tiling import plan_tasks, resolve_settings

    info = ModelInfo.from_meta(meta)
    settings = resolve_settings(info, tile=CALIB_TILE, overlap=0, tta=False)
    tasks = plan_tasks(images, None, info, settings)
    spots = [(t, w) for t in tasks for w in t.windows]
    pick = np.unique(np.linspace(0, len(spots) - 1, min(2 * CALIB_CHIPS, len(spots))).astype(int))
    chips: list[np.ndarray] = []
    for task in tasks:
        wins = tuple(spots[i][1] for i in pick if spots[i][0] is task)
        sub = replace(task, windows=wins)
        chips.extend(x[None] for batch, _ in read_batches(sub, info, 16) for x in batch)
    if not chips:
        raise InputError("--calibrate: the scenes have no valid pixels")
    keep = np.unique(np.linspace(0, len(chips) - 1, min(CALIB_CHIPS, len(chips))).astype(int))
    return [chips[i] for i in keep]


def _quantise(src: Path, dst: Path, chips: list[np.ndarray]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[np.ndarray] = iter(chips)

        def get_next(self) -> dict | None:
            chip = next(self.it, None)
            return None if chip is None else {"image": chip}

    quantize_static(
        str(src),
        str(dst),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _plain(value: object) -> object:
    """JSON for numpy scalars/arrays a meta dict may hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
