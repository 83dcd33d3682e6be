"""The localiser's network: a small heatmap U-Net run on one slice at a time (with its two neighbours
as channels), one output channel per point it looks for. Small on purpose: it sees every slice of a
series at test time and trains in about a minute per fold on a CPU at the smoke settings."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DoubleConv", "KeypointNet"]


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU, the first strided: (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class KeypointNet(nn.Module):
    """A small U-Net: (B, C, S, S) slices -> (B, K, S/stride, S/stride) heatmap logits, one channel per point.

    ``stride`` 4 or 2: the finer map costs one more decoder stage and places points twice as finely.
    """

    def __init__(self, in_chans: int = 3, n_points: int = 5, width: int = 16, stride: int = 4) -> None:
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"KeypointNet stride must be 2 or 4, got {stride}")
        w = width
        self.stride = stride
        self.e1 = DoubleConv(in_chans, w, 2)        # S/2
        self.e2 = DoubleConv(w, 2 * w, 2)           # S/4
        self.e3 = DoubleConv(2 * w, 4 * w, 2)       # S/8
        self.e4 = DoubleConv(4 * w, 8 * w, 2)       # S/16
        self.d3 = DoubleConv(8 * w + 4 * w, 4 * w)
        self.d2 = DoubleConv(4 * w + 2 * w, 2 * w)
        self.d1 = DoubleConv(2 * w + w, w) if stride == 2 else None
        self.head = nn.Conv2d(w if stride == 2 else 2 * w, n_points, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        e4 = self.e4(e3)
        d3 = self.d3(torch.cat([nn.functional.interpolate(e4, size=e3.shape[-2:]), e3], 1))
        d = self.d2(torch.cat([nn.functional.interpolate(d3, size=e2.shape[-2:]), e2], 1))
        if self.d1 is not None:
            d = self.d1(torch.cat([nn.functional.interpolate(d, size=e1.shape[-2:]), e1], 1))
        return self.head(d)
