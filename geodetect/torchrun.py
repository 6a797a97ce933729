"""Running a `model.pt` for inference: numpy batch in, numpy head outputs out.

The same call as `onnxrun.OnnxNet`, so `infer` tiles, decodes and merges one way for both.
The network is prepared once at load (BatchNorm folded into the convs, channels_last on
CPU); bf16 is CPU autocast, worth it only where the CPU has AVX512-BF16/AMX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geodetect.device import autocast, pin_memory
from geodetect.errors import InputError
from geodetect.model import load_model, prepare_for_inference
from geodetect.modelinfo import ModelInfo


class TorchNet:
    """A loaded GeoNet that maps an NCHW float32 array to its head outputs (float32 arrays)."""

    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str = "fp32"):
        self.net = net
        self.device = device
        self.precision = precision
        self.channels_last = device.type == "cpu"

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.forward(batch)

    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Head outputs of one batch (a method, so callers can wrap it like nn.Module's)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        if pin_memory(self.device):
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._precision():
            out = self.net(x)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def _precision(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return autocast(self.device)


def load_torch(
    path: str | Path, device: torch.device, precision: str = "fp32"
) -> tuple[TorchNet, ModelInfo]:
    """(TorchNet, ModelInfo) for a model file on `device`."""
    if precision == "bf16" and device.type != "cpu":
        raise InputError("--precision bf16 is the CPU path; on CUDA float16 autocast is used")
    net, meta = load_model(path, device=device)
    info = ModelInfo.from_meta(meta, str(path))
    return TorchNet(prepare_for_inference(net, device), device, precision), info
