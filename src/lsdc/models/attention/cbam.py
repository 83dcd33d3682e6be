"""Body branch 1: CBAM, channel then spatial attention (the paper's Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChannelAttention(nn.Module):
    """Which channels matter: GAP and GMP through a shared bottleneck MLP (ratio ``reduction``).

    Follows Algorithm 1: Mc = sigmoid(FC2(ReLU(FC1(avg)) + ReLU(FC1(max)))).
    (B, C, H, W) -> weights (B, C, 1, 1) in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        avg = self.act(self.fc1(x.mean(dim=(2, 3))))
        mx = self.act(self.fc1(x.amax(dim=(2, 3))))
        return torch.sigmoid(self.fc2(avg + mx))[:, :, None, None]


class SpatialAttention(nn.Module):
    """Where to look: channel-wise mean and max, concatenated, a kxk conv and a sigmoid.

    (B, C, H, W) -> weights (B, 1, H, W) in (0, 1).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel then spatial re-weighting of a feature map.

    (B, C, H, W) -> (B, C, H, W); with ``return_attention`` also the spatial map (B, 1, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(spatial_kernel_size)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        x = x * self.channel(x)
        spatial = self.spatial(x)
        x = x * spatial
        return (x, spatial) if return_attention else x
