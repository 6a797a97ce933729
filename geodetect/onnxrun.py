"""Running an exported `.onnx` model with ONNX Runtime, behind the same call as the torch net.

`OnnxNet(batch)` is `torchrun.TorchNet`'s call (an NCHW float32 array in, the head outputs as
arrays out), so tiling, TTA, decoding and merging are shared with the torch path and the two
give the same detections. Nothing here imports torch: a fresh `geodetect infer model.onnx`
process skips its 4 s (CPU) import. onnxruntime is the optional extra `geodetect[onnx]`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from geodetect.errors import DeviceError, ModelError, first_line
from geodetect.modelinfo import ModelInfo

META_KEY = "geodetect"  # metadata_props key holding the model file's meta as JSON
OUTPUTS = ("heatmap", "offset", "size", "angle", "heading")
MISSING = "ONNX models need onnxruntime: pip install 'geodetect[onnx]'"


def import_ort() -> Any:
    """onnxruntime, or a one-line ModelError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(MISSING) from None
    return onnxruntime


class OnnxNet:
    """An ONNX Runtime session that looks like GeoNet to the inference loop."""

    def __init__(self, session: Any):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, np.float32)
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs, strict=True))


def read_meta(path: str | Path) -> dict:
    """The geodetect meta stored in an ONNX file's metadata_props (ModelError if absent)."""
    ort = import_ort()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ModelError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    return _meta_of(session, path)


def _meta_of(session: Any, path: str | Path) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ModelError(
            f"{path}: an ONNX model without geodetect metadata; export it with "
            "`geodetect export MODEL.pt --out MODEL.onnx`"
        )
    try:
        meta = json.loads(props[META_KEY])
    except ValueError:
        raise ModelError(f"{path}: its geodetect metadata is not valid JSON") from None
    return meta


def load_onnx(path: str | Path, device: str | None = "auto") -> tuple[OnnxNet, ModelInfo]:
    """(OnnxNet, ModelInfo) for an exported model; CUDA through ORT's CUDA provider when asked.

    Threads: OMP_NUM_THREADS when set (as torch reads it), else ORT's default (all cores).
    """
    ort = import_ort()
    providers: list[Any] = ["CPUExecutionProvider"]
    match = re.match(r"^(auto|cpu|cuda)(?::(\d+))?$", (device or "auto").strip().lower())
    if match is None:
        raise DeviceError(f"device '{device}' not understood; use auto, cpu, cuda or cuda:N")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if match.group(1) == "cuda" and not has_cuda:
        raise DeviceError(
            "this onnxruntime has no CUDA provider; install onnxruntime-gpu or use --device cpu"
        )
    if match.group(1) == "cuda" or (match.group(1) == "auto" and has_cuda):
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(match.group(2) or 0)}))
    opts = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    # No busy-waiting between ops: ORT's spinning threads took the cores from the read-ahead
    # thread (2 cores, dense 4096² int8: 5.5 -> 5.1 s end to end, 8.5 -> 7.0 CPU-s).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # quiet: warnings about unused initialisers are not the user's
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    meta = _meta_of(session, path)
    names = [o.name for o in session.get_outputs()]
    if sorted(names) != sorted(OUTPUTS):
        raise ModelError(f"{path}: outputs {names} are not a geodetect model's {list(OUTPUTS)}")
    return OnnxNet(session), ModelInfo.from_meta(meta, str(path))
