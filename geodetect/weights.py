"""Starting weights: a pretrained backbone file (`model.pretrained`) and warm starts (`--init`).

Both exist so a user's few dozen labels do not have to teach a network from nothing: the
backbone can come from `geodetect pretrain` on the user's own unlabelled scenes, and a new
training run can start from an earlier geodetect model (a review round fine-tunes instead of
retraining). Both are checked strictly: a file that does not fit is a one-line ModelError,
never a silent partial load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from geodetect.errors import InputError, ModelError, first_line

BACKBONE_FORMAT = "geodetect-backbone"
BACKBONE_VERSION = 1
ARCH_KEYS = ("in_channels", "width", "depth", "backbone")


def _arch_text(arch: dict[str, Any]) -> str:
    return (
        f"{arch.get('in_channels')} input band(s), width {arch.get('width')}, "
        f"depth {arch.get('depth', 1)}, backbone {arch.get('backbone', 'none')}"
    )


def backbone_blob(
    backbone: nn.Module, arch: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """The plain dict saved as backbone.pt (CPU tensors, built-in types only)."""
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    fit = {k: arch.get(k, 1 if k == "depth" else None) for k in ARCH_KEYS}
    return {
        "format": BACKBONE_FORMAT,
        "version": BACKBONE_VERSION,
        "state_dict": state,
        "arch": fit,
        **extra,
    }


def load_backbone(backbone: nn.Module, path: str | Path, arch: dict[str, Any]) -> dict[str, Any]:
    """Load a `geodetect pretrain` file (or a geodetect model's backbone) into `backbone`.

    Strict: the file's architecture (bands, width, depth) and every key and shape must fit.
    Returns the file's metadata (without weights).
    """
    from geodetect.modelfile import FORMAT, load_file

    blob = load_file(path)
    if not isinstance(blob, dict) or blob.get("format") not in (BACKBONE_FORMAT, FORMAT):
        raise ModelError(f"{path}: not a geodetect backbone file; make one with geodetect pretrain")
    state = blob.get("state_dict")
    if not isinstance(state, dict):
        raise ModelError(f"{path}: backbone file has no weights")
    if blob["format"] == FORMAT:  # a whole model: take its (first member's) backbone
        state = {k[9:]: v for k, v in member_state(state, 0).items() if k.startswith("backbone.")}
    have = blob.get("arch") or {}
    want = {k: arch.get(k, 1 if k == "depth" else "none" if k == "backbone" else None)
            for k in ARCH_KEYS}  # fmt: skip
    if any(have.get(k, 1 if k == "depth" else "none") != want[k] for k in ARCH_KEYS if k in have):
        raise ModelError(
            f"{path}: backbone for {_arch_text(have)}; this model has {_arch_text(want)} "
            "(set model.width/depth/bands like the pretraining run)"
        )
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the backbone ({first_line(exc)})") from None
    return {k: v for k, v in blob.items() if k != "state_dict"}


def fit_config_to(config: Any, meta: dict[str, Any]) -> Any:
    """A copy of `config` whose network shape and GSD follow the --init model's.

    Fine-tuning keeps the model's architecture (the weights only fit it) and, unless the
    config asks for one, its ground sample distance.
    """
    arch = meta["arch"]
    model = config.model.model_copy(
        update={
            "width": int(arch["width"]),
            "depth": int(arch.get("depth", 1)),
            "backbone": arch.get("backbone", "none"),
            "members": int(arch.get("members", 1)),
            "preset": None,
            "pretrained": None,
        }
    )
    data = config.data
    if data.gsd is None:
        data = data.model_copy(update={"gsd": float(meta["gsd"])})
    return config.model_copy(update={"model": model, "data": data})


def member_state(state: dict[str, Any], member: int) -> dict[str, Any]:
    """One network's weights from a model's state_dict: an ensemble's member `member` (modulo
    its size), or the whole state_dict of a single network."""
    members = sorted({int(k.split(".")[1]) for k in state if k.startswith("members.")})
    if not members:
        return state
    prefix = f"members.{members[member % len(members)]}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def warm_start(
    net: nn.Module, path: str | Path, classes: list[str], bands: list[int], member: int = 0
) -> list[str]:
    """Copy an existing model's weights into `net` (built for `classes`); returns the classes
    that start fresh (new heads). Classes are matched by name; the backbone, pyramid and
    regression head are shared by all classes and always carried over. From an ensemble,
    `member` picks the network (member k of a new ensemble starts from member k)."""
    from geodetect.modelfile import load_file

    blob = load_file(path)
    old_classes = list(blob["classes"])
    if [int(b) for b in blob["bands"]] != [int(b) for b in bands]:
        raise InputError(
            f"{path}: model reads bands {list(blob['bands'])}, these scenes give {bands}; "
            "set data.bands"
        )
    state = net.state_dict()
    old = member_state(blob["state_dict"], member)
    for key, value in old.items():
        if key not in state:
            raise ModelError(f"{path}: weights do not fit the network (unexpected key {key})")
        if key.startswith("heatmap."):
            for k, name in enumerate(classes):
                if name in old_classes:
                    state[key][k] = value[old_classes.index(name)]
        elif state[key].shape != value.shape:
            raise ModelError(f"{path}: weights do not fit the network ({key}: shape differs)")
        else:
            state[key] = value
    with torch.no_grad():
        net.load_state_dict(state)
    return [c for c in classes if c not in old_classes]
