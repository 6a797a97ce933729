"""The CNN: a small dense oriented-object detector, its loss, decoding and model files.

One pass over a tile gives, on a grid of stride 4, a score per class for "an object centre is
here" and, at each centre, the sub-cell offset, log length and width, the long-axis angle as
(cos 2a, sin 2a) (so a and a + 180 are the same) and, for classes with a front, the heading
as (cos h, sin h). This is CenterNet's recipe with rotation: no anchors, no per-angle
templates, so objects at any angle are read directly from the rotation patterns the positives
taught it. The built-in backbone is small on purpose (CPU speed matters); torchvision ResNets
with local weights are an option.

All angles are in the pixel frame of the network input (degrees clockwise from -row, see
DESIGN.md). What each cell is trained to predict is `targets.py` (numpy, no torch).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geodetect import geometry
from geodetect.errors import ModelError, first_line
from geodetect.modelfile import FORMAT, VERSION, load_file
from geodetect.targets import MULTIPLE, REG_CHANNELS, STRIDE

# ------------------------------------------------------------------------------ network


class ConvBN(nn.Sequential):
    """conv -> batch norm -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1):
        pad = dilation * (k // 2)
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Residual(nn.Module):
    """Two 3x3 convs with an identity shortcut; dilation widens the view of big objects."""

    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.a = ConvBN(ch, ch, 3, 1, dilation)
        self.b = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, dilation, dilation=dilation, bias=False), nn.BatchNorm2d(ch)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)))


class SmallBackbone(nn.Module):
    """Five stride-2 stages; returns features at strides 4, 8, 16, 32.

    `depth` adds that many extra residual blocks to each of the strides 8-32 stages (depth 1 is
    the original network, so old model files load unchanged).
    """

    def __init__(self, cin: int, w: int, depth: int = 1):
        super().__init__()
        extra = max(0, int(depth) - 1)
        self.channels = (2 * w, 4 * w, 8 * w, 8 * w)
        self.stem = ConvBN(cin, w, 3, 2)
        self.s4 = nn.Sequential(ConvBN(w, 2 * w, 3, 2), ConvBN(2 * w, 2 * w))
        self.s8 = nn.Sequential(
            ConvBN(2 * w, 4 * w, 3, 2), Residual(4 * w), *[Residual(4 * w) for _ in range(extra)]
        )
        self.s16 = nn.Sequential(
            ConvBN(4 * w, 8 * w, 3, 2),
            Residual(8 * w),
            Residual(8 * w, 2),
            *[Residual(8 * w, 2) for _ in range(extra)],
        )
        self.s32 = nn.Sequential(
            ConvBN(8 * w, 8 * w, 3, 2),
            Residual(8 * w, 2),
            *[Residual(8 * w, 2) for _ in range(extra)],
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        return [f4, f8, f16, self.s32(f16)]


class ResNetBackbone(nn.Module):
    """A torchvision ResNet (random init, or local weights) as a strides 4-32 feature pyramid."""

    def __init__(self, cin: int, name: str, pretrained: str | None):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            state = load_file(pretrained)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelError(f"{pretrained}: not {name} weights ({first_line(exc)})") from None
        if cin != 3:
            old = net.conv1.weight.data
            conv = nn.Conv2d(cin, 64, 7, 2, 3, bias=False)
            w = old.mean(dim=1, keepdim=True).repeat(1, cin, 1, 1)
            w[:, : min(3, cin)] = old[:, : min(3, cin)]
            conv.weight.data = w
            net.conv1 = conv
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.channels = tuple(int(layer[-1].conv1.in_channels) for layer in self.layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class GeoNet(nn.Module):
    """Backbone -> top-down pyramid to stride 4 -> heatmap and regression heads."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        cin, k, w = int(arch["in_channels"]), int(arch["n_classes"]), int(arch["width"])
        if arch.get("backbone", "none") == "none":
            self.backbone: nn.Module = SmallBackbone(cin, w, int(arch.get("depth", 1)))
            if arch.get("pretrained"):
                from geodetect.weights import load_backbone

                load_backbone(self.backbone, arch["pretrained"], arch)
        else:
            self.backbone = ResNetBackbone(cin, arch["backbone"], arch.get("pretrained"))
        neck = 2 * w
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck, 1) for c in self.backbone.channels)
        self.smooth = ConvBN(neck, neck)
        self.head = ConvBN(neck, neck)
        self.heatmap = nn.Conv2d(neck, k, 1)
        self.regress = nn.Conv2d(neck, REG_CHANNELS, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01
        nn.init.zeros_(self.regress.weight)
        with torch.no_grad():
            self.regress.bias.copy_(torch.tensor([0.5, 0.5, math.log(16), math.log(8), 0, 0, 0, 0]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        p = self.lateral[-1](feats[-1])
        for lat, f in zip(self.lateral[-2::-1], feats[-2::-1], strict=True):
            p = lat(f) + F.interpolate(p, size=f.shape[-2:], mode="nearest")
        h = self.head(self.smooth(p))
        r = self.regress(h)
        return {
            "heatmap": self.heatmap(h),
            "offset": r[:, 0:2],
            "size": r[:, 2:4],
            "angle": r[:, 4:6],
            "heading": r[:, 6:8],
        }


class Ensemble(nn.Module):
    """GeoNets trained apart (`model.members`: other seeds, other validation splits), run as
    one graph: each output holds the members' outputs member-major along the batch (batch B
    in, M x B out), so torch, ONNX export and ONNX Runtime run one network, and inference
    decodes each member and fuses their boxes as it fuses TTA passes (`detection._forward`).

    Why boxes and not maps: on the NEON crowns fusing three members' boxes gave AP@0.4 0.597,
    averaging their heatmaps and regressions cell by cell 0.575 (the members 0.535-0.596).
    """

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        single = {**arch, "members": 1}
        self.members = nn.ModuleList(GeoNet(single) for _ in range(int(arch["members"])))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [m(x) for m in self.members]
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def build_model(arch: dict[str, Any]) -> nn.Module:
    """A fresh network for an `arch` dict (as stored in model files): a GeoNet, or an
    Ensemble of `arch["members"]` GeoNets."""
    if int(arch.get("members", 1)) > 1:
        return Ensemble(arch)
    return GeoNet(arch)


def make_arch(in_channels: int, n_classes: int, model_cfg: Any) -> dict[str, Any]:
    """The arch dict for a ModelConfig: everything needed to rebuild the network."""
    return {
        "name": model_cfg.arch,
        "in_channels": int(in_channels),
        "n_classes": int(n_classes),
        "width": int(model_cfg.capacity[0]),
        "depth": int(model_cfg.capacity[1]),
        "backbone": model_cfg.backbone,
        "members": int(model_cfg.members),
        "pretrained": None,  # weights live in the model file's state_dict
        "stride": STRIDE,
        "multiple": MULTIPLE,
    }


# ------------------------------------------------------------------------------ loss


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CenterNet's penalty-reduced focal loss; `known` (N, 1, H, W) masks unknown cells.

    Returns (loss normalised by the number of centres, per-chip background loss) — the second
    ranks negative chips for hard-negative sampling.
    """
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos)
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos) * known)
    n_pos = pos.sum().clamp(min=1.0)
    per_chip = neg_loss.flatten(1).sum(1)
    return (pos_loss.sum() + neg_loss.sum()) / n_pos, per_chip.detach()


def detection_loss(
    out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Total loss, its parts (floats), and per-chip background loss.

    `targets["known"]` (N, 1, H, W) at the output stride is 1 where the label says what is
    there (inside a negative region or a positive, and valid pixels): unknown pixels carry
    no loss at all.
    """
    hm, per_chip = focal_loss(out["heatmap"], targets["heatmap"], targets["known"])
    pred = torch.cat([out[k].float() for k in ("offset", "size", "angle", "heading")], 1)
    err = F.smooth_l1_loss(pred, targets["reg"], reduction="none", beta=0.1)
    box_w, head_w = targets["reg_weight"][:, :1], targets["reg_weight"][:, 1:]
    n_box, n_head = box_w.sum().clamp(min=1.0), head_w.sum().clamp(min=1.0)
    off = (err[:, 0:2] * box_w).sum() / n_box
    size = (err[:, 2:4] * box_w).sum() / n_box
    ang = (err[:, 4:6] * box_w).sum() / n_box
    head = (err[:, 6:8] * head_w).sum() / n_head
    # Heading weighs 3: the front/back call of a dark car rests on a faint rear-window cue and
    # is learnt last; at weight 1 unseen vehicles' headings were right 84-91 %, at 3 95-98 %.
    total = hm + off + size + 2.0 * ang + 3.0 * head
    parts = {
        k: float(v.detach())
        for k, v in {
            "heatmap": hm,
            "offset": off,
            "size": size,
            "angle": ang,
            "heading": head,
        }.items()
    }
    return total, parts, per_chip


# ------------------------------------------------------------------------------ decoding


def decode(
    out: dict[str, torch.Tensor],
    threshold: float,
    has_front: list[bool],
    max_det: int = 500,
    stride: int = STRIDE,
    upright: list[bool] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Peaks of the heatmap -> oriented boxes per image (`decoding.decode_arrays`, the one
    decoder torch and ONNX Runtime runs share), from the network's tensors."""
    from geodetect.decoding import decode_arrays

    arrays = {k: v.detach().float().cpu().numpy() for k, v in out.items()}
    results = decode_arrays(arrays, threshold, has_front, max_det, stride)
    if upright is not None and any(upright):  # classes without orientation: axis-aligned
        k = arrays["heatmap"].shape[1]
        flags = np.asarray(list(upright) + [False] * (k - len(upright)), bool)
        for r in results:
            up = flags[r["classes"]]
            r["boxes"][up] = geometry.snap_upright(r["boxes"][up])
    return results


# ------------------------------------------------------------------------------ model files


REQUIRED_KEYS = ("state_dict", "classes", "has_front", "bands", "elevation", "gsd", "arch")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GeoNet, dict]:
    """(network in eval mode on `device`, meta dict) from a model file written by `train`.

    Loads with `weights_only=True`: a model file can never run code.
    """
    blob = load_file(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelError(f"{path}: not a geodetect model file (no '{FORMAT}' header)")
    if int(blob.get("version", 0)) > VERSION:
        raise ModelError(
            f"{path}: model file version {blob['version']} is newer than this geodetect"
        )
    missing = [k for k in REQUIRED_KEYS if k not in blob]
    if missing:
        raise ModelError(f"{path}: model file lacks {', '.join(missing)}")
    try:
        net = build_model(blob["arch"])
        net.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: weights do not fit the network ({first_line(exc)})") from None
    net.to(torch.device(device)).eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return net, meta


def model_blob(net: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """The plain dict saved as model.pt (CPU tensors, built-in types only)."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "state_dict": state, **meta}


# ------------------------------------------------------------------------------ inference


def fuse_conv_bn(net: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the conv before it, in place (returns `net`).

    Done once at load time for inference: a separate batch-norm pass over every feature map
    cost 14 % of a CPU forward; folded, the conv computes the same thing (to float rounding).
    Pairs are a Sequential's consecutive (Conv2d, BatchNorm2d) children and torchvision's
    (convN, bnN) attributes; a folded BatchNorm becomes an Identity.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            kids = list(module._modules.items())
            for (_, a), (name_b, b) in zip(kids, kids[1:], strict=False):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    module._modules[_key(module, a)] = fuse_conv_bn_eval(a, b)
                    module._modules[name_b] = nn.Identity()
        for i in range(1, 4):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{i}", nn.Identity())
    return net


def _key(parent: nn.Module, child: nn.Module) -> str:
    return next(k for k, v in parent._modules.items() if v is child)


def prepare_for_inference(net: nn.Module, device: torch.device) -> nn.Module:
    """The network as inference runs it: eval, BatchNorm folded, channels_last on CPU."""
    net = fuse_conv_bn(net.eval())
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return net
