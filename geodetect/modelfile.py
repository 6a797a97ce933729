"""Model files on disk: the format tag and the one safe loader (`weights_only=True`).

Below `model` (which builds networks from them) and `weights` (pretrained backbones and
warm starts), so neither needs the other to read a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from geodetect.errors import ModelError, first_line

FORMAT = "geodetect-model"
VERSION = 1


def load_file(path: str | Path) -> Any:
    """torch.load with weights_only=True; anything else is a ModelError."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: model file not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, unsafe globals, truncation
        raise ModelError(f"{p}: not a geodetect model file ({first_line(exc)})") from None
