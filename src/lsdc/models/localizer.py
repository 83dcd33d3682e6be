"""The localiser's networks: a small heatmap U-Net for the level points on a sagittal slice, and a
patch scorer that picks the slice a point's structure lies on. Small on purpose: they see one slice
(or a 48 px patch) at a time and train in seconds per fold on a CPU."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DoubleConv", "KeypointNet", "SliceScorer"]


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU, the first strided: (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class KeypointNet(nn.Module):
    """A small U-Net: (B, C, S, S) slices -> (B, K, S/4, S/4) heatmap logits, one channel per point."""

    stride = 4

    def __init__(self, in_chans: int = 3, n_points: int = 5, width: int = 16) -> None:
        super().__init__()
        w = width
        self.e1 = DoubleConv(in_chans, w, 2)        # S/2
        self.e2 = DoubleConv(w, 2 * w, 2)           # S/4
        self.e3 = DoubleConv(2 * w, 4 * w, 2)       # S/8
        self.e4 = DoubleConv(4 * w, 8 * w, 2)       # S/16
        self.d3 = DoubleConv(8 * w + 4 * w, 4 * w)
        self.d2 = DoubleConv(4 * w + 2 * w, 2 * w)
        self.head = nn.Conv2d(2 * w, n_points, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        e4 = self.e4(e3)
        d3 = self.d3(torch.cat([nn.functional.interpolate(e4, size=e3.shape[-2:]), e3], 1))
        d2 = self.d2(torch.cat([nn.functional.interpolate(d3, size=e2.shape[-2:]), e2], 1))
        return self.head(d2)


class SliceScorer(nn.Module):
    """(N, 3, P, P) patches (a slice and its two neighbours) -> (N,) score that the point's structure
    (canal, foramen or recess) is on the middle slice; compared across one point's candidates with a
    softmax."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(DoubleConv(3, w, 2), DoubleConv(w, 2 * w, 2), DoubleConv(2 * w, 4 * w, 2),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.score = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x))[:, 0]
