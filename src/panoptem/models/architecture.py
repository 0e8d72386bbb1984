"""The panoptic network: a small residual encoder, a light FPN-style decoder at
output stride 4, and three heads (semantic logits, centre heatmap, offsets).

Built for accuracy per CPU second: plain 3x3 convolutions (fast on CPU with
channels-last), few channels at high resolution, more at low resolution.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PanoptemError
from .card import OUTPUT_STRIDE


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """Basic residual block (two 3x3 convolutions)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        s = x if self.skip is None else self.skip(x)
        return F.relu(y + s, inplace=True)


class _Head(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.body = _conv_bn(cin, mid)
        self.out = nn.Conv2d(mid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class PanopticNet(nn.Module):
    """Panoptic-DeepLab-style network.

    Input ``(N, in_channels, H, W)``: a normalised plane (with its neighbours along the stack
    when ``in_channels`` > 1), H and W multiples of 32.
    Returns a dict of tensors at output stride 4 (``H/4 x W/4``):
    ``sem_logits`` (N, C, ...), ``ctr_hmp`` (N, 1, ...) and ``offsets``
    (N, 2, ...; dy, dx in input pixels).
    """

    stages: tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4")
    output_stride: int = OUTPUT_STRIDE

    def __init__(
        self,
        num_classes: int = 1,
        widths: Sequence[int] = (24, 32, 64, 128, 192),
        depths: Sequence[int] = (1, 1, 2, 2),
        decoder_channels: int = 64,
        head_channels: int = 32,
        in_channels: int = 1,
    ):
        super().__init__()
        w = list(widths)
        self.config = dict(num_classes=num_classes, widths=list(widths), depths=list(depths),
                           decoder_channels=decoder_channels, head_channels=head_channels,
                           in_channels=in_channels)
        self.stem = _conv_bn(in_channels, w[0], stride=2)  # 1/2
        enc = []
        cin = w[0]
        for i, (cout, d) in enumerate(zip(w[1:], depths)):
            blocks = [_Residual(cin, cout, stride=2)] + [_Residual(cout, cout) for _ in range(d - 1)]
            enc.append(nn.Sequential(*blocks))
            cin = cout
        self.stage1, self.stage2, self.stage3, self.stage4 = enc  # 1/4, 1/8, 1/16, 1/32
        # context: global pooling branch + 1x1 at 1/32
        self.context = _conv_bn(w[4] * 2, decoder_channels, k=1)
        self.lat3 = _conv_bn(w[3], decoder_channels, k=1)
        self.lat2 = _conv_bn(w[2], decoder_channels, k=1)
        self.lat1 = _conv_bn(w[1], decoder_channels, k=1)
        self.fuse3 = _conv_bn(decoder_channels, decoder_channels)
        self.fuse2 = _conv_bn(decoder_channels, decoder_channels)
        self.fuse1 = _conv_bn(decoder_channels, decoder_channels)
        self.sem_head = _Head(decoder_channels, head_channels, num_classes)
        self.ctr_head = _Head(decoder_channels, head_channels, 1)
        self.off_head = _Head(decoder_channels, head_channels, 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest features (N, C, H/32, W/32), whose mean over the image is
        the network's global context."""
        return self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                tissue: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """``context`` (N, C, 1, 1): the global context to use instead of this
        input's own (the mean of :meth:`encode` over a larger image, when ``x``
        is a tile of it). ``tissue`` (N, 1, H/32, W/32): the weight of each deepest
        cell in this input's own context (its share of pixels that are not padding), so
        that padding around an image does not change what is found inside it; by
        default every cell weighs the same."""
        x = self.stem(x)
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        if context is not None:
            g = context.to(c4.dtype).expand_as(c4)
        elif tissue is not None:
            t = tissue.float()  # sums in float32: half precision overflows over a large plane's cells
            g = (c4.float() * t).sum(dim=(2, 3), keepdim=True) / t.sum(dim=(2, 3), keepdim=True)
            g = g.to(c4.dtype).expand_as(c4)
        else:
            g = c4.mean(dim=(2, 3), keepdim=True).expand_as(c4)
        p = self.context(torch.cat([c4, g], 1))
        p = self.fuse3(self.lat3(c3) + F.interpolate(p, size=c3.shape[-2:], mode="bilinear", align_corners=False))
        p = self.fuse2(self.lat2(c2) + F.interpolate(p, size=c2.shape[-2:], mode="bilinear", align_corners=False))
        p = self.fuse1(self.lat1(c1) + F.interpolate(p, size=c1.shape[-2:], mode="bilinear", align_corners=False))
        return {
            "sem_logits": self.sem_head(p),
            "ctr_hmp": torch.sigmoid(self.ctr_head(p)),
            "offsets": self.off_head(p),
        }


def architecture_config(config: dict | None = None) -> dict:
    """Every constructor argument of :class:`PanopticNet`: ``config`` completed
    with the defaults, as a card records it (so weights never depend on
    defaults that may change).

    >>> architecture_config({"num_classes": 3})["widths"]
    [24, 32, 64, 128, 192]
    """
    params = inspect.signature(PanopticNet.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    unknown = sorted(set(config or {}) - set(defaults))
    if unknown:
        raise PanoptemError(f"Unknown architecture setting(s) {unknown}; PanopticNet takes {sorted(defaults)}.")
    full = {**defaults, **(config or {})}
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in full.items()}


class EmpanadaAdapter(nn.Module):
    """Calls an empanada TorchScript model with its (x, render_steps, interpolate_ins)
    signature and returns outputs at stride 4 like panoptem's own networks."""

    def __init__(self, scripted):
        super().__init__()
        self.scripted = scripted

    def forward(self, x):
        out = self.scripted(x, 2, False)
        return {"sem_logits": out["sem_logits"], "ctr_hmp": out["ctr_hmp"], "offsets": out["offsets"]}


def folded_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of an evaluation-mode network with every batch norm that follows a convolution
    in a ``Sequential`` folded into that convolution's weights and bias (the same function to
    float32 rounding, one kernel fewer per pair). A network in training mode is returned as it is."""
    if module.training:
        return module
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval
    out = copy.deepcopy(module)
    for seq in out.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return out


def build_model(config: dict) -> PanopticNet:
    """Build a :class:`PanopticNet` from its ``architecture`` config dict."""
    return PanopticNet(**architecture_config(config))
