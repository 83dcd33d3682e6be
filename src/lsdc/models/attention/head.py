"""The head: 7x7 conv-BN-ReLU blocks, max-pooling and Enhanced Inception Modules; or a timm model's last
feature map in its place (the backbone variant)."""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from lsdc.errors import ConfigError
from lsdc.models.weights import load_pretrained


class ConvBnAct(nn.Module):
    """Conv2d -> BatchNorm -> ReLU, 'same' padding; (B, in_chs, H, W) -> (B, out_chs, H/s, W/s)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConvBnAct(nn.Module):
    """Depthwise kxk then pointwise 1x1 conv, BN, ReLU: a large receptive field at ~1/k^2 the cost.

    (B, in_chs, H, W) -> (B, out_chs, H, W).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size, padding=kernel_size // 2, groups=in_chs, bias=False)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv_pw(self.conv_dw(x))))


class EnhancedInception(nn.Module):
    """Enhanced Inception Module (paper Fig. 4): multi-scale features from parallel branches.

    Branches: 1x1 conv; for each k in ``kernel_sizes`` a 1x1 reduction then a depthwise-separable
    kxk conv; 3x3 max-pool then 1x1 conv. Each branch has ``out_chs // n_branches`` channels; the
    concatenation is projected to ``out_chs`` by a 1x1 conv when ``project`` (else ``out_chs`` must
    be divisible by the number of branches). (B, in_chs, H, W) -> (B, out_chs, H, W).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_sizes: tuple[int, ...] = (3, 5), project: bool = True) -> None:
        super().__init__()
        n_branches = 2 + len(kernel_sizes)
        branch_chs = out_chs // n_branches
        if branch_chs < 1 or (not project and out_chs % n_branches):
            raise ConfigError(
                f"inception width {out_chs} must be a positive multiple of its {n_branches} branches"
                + ("" if project else " when the 1x1 projection is off")
            )
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ConfigError(f"inception kernel sizes must be odd and positive, got {kernel_sizes}")
        self.branch_1x1 = ConvBnAct(in_chs, branch_chs, 1)
        self.branches_kxk = nn.ModuleList(
            nn.Sequential(ConvBnAct(in_chs, branch_chs, 1), SeparableConvBnAct(branch_chs, branch_chs, k))
            for k in kernel_sizes
        )
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBnAct(in_chs, branch_chs, 1))
        cat_chs = branch_chs * n_branches
        self.proj = ConvBnAct(cat_chs, out_chs, 1) if project else nn.Identity()
        self.out_chs = out_chs

    def forward(self, x: Tensor) -> Tensor:
        outs = [self.branch_1x1(x), *(branch(x) for branch in self.branches_kxk), self.branch_pool(x)]
        return self.proj(torch.cat(outs, dim=1))


class AttentionHead(nn.Module):
    """The paper's head: low-level features from stacked 7x7 conv-BN-ReLU blocks, then max-pooling
    and Enhanced Inception Modules (a max-pool before each one after the first, as in GoogLeNet).

    Strided convs and pools shrink the map by ``reduction`` (16 by default: 224 -> 14x14 tokens)
    so self-attention in the body stays cheap. (B, in_chans, H, W) -> (B, out_chs, H/r, W/r).
    """

    def __init__(
        self,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64),
        strides: tuple[int, ...] = (2, 2),
        kernel_size: int = 7,
        eim_widths: tuple[int, ...] = (192, 384),
        eim_kernel_sizes: tuple[int, ...] = (3, 5),
        eim_project: bool = True,
    ) -> None:
        super().__init__()
        if not widths or len(widths) != len(strides):
            raise ConfigError(f"head_widths {widths} and head_strides {strides} must be equally long")
        if not eim_widths:
            raise ConfigError("eim_widths must name at least one Enhanced Inception Module")
        layers: list[nn.Module] = []
        chs = in_chans
        for width, stride in zip(widths, strides, strict=True):
            layers.append(ConvBnAct(chs, width, kernel_size, stride))
            chs = width
        self.convs = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[nn.Module] = []
        for i, width in enumerate(eim_widths):
            if i > 0:
                stages.append(nn.MaxPool2d(3, stride=2, padding=1))
            stages.append(EnhancedInception(chs, width, eim_kernel_sizes, eim_project))
            chs = width
        self.inception = nn.Sequential(*stages)
        self.out_chs = chs
        self.reduction = 2 ** len(eim_widths)
        for stride in strides:
            self.reduction *= stride

    def forward(self, x: Tensor) -> Tensor:
        return self.inception(self.pool(self.convs(x)))


class TimmFeatureBackbone(nn.Module):
    """Last feature map of any timm model, to put the paper's body on a stronger (pretrained) CNN.

    The plain timm model is built (random init), loaded from the local ``pretrained_path`` with
    the same fit checks as the factory, then pruned after its last feature map and run through
    ``forward_intermediates`` (or ``forward_features`` for models without it). Weights never come
    from the network. (B, in_chans, H, W) -> (B, out_chs, h, w).
    """

    def __init__(self, name: str, in_chans: int = 3, pretrained_path: str | None = None) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm backbone '{name}'")
        self.net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
        if pretrained_path is not None:
            load_pretrained(self.net, pretrained_path, what="backbone_pretrained_path")
        self.use_intermediates = hasattr(self.net, "forward_intermediates")
        if self.use_intermediates:
            self.net.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=True)
        feature_info = getattr(self.net, "feature_info", None)
        self.out_chs: int = feature_info[-1]["num_chs"] if feature_info else self.net.num_features

    def forward(self, x: Tensor) -> Tensor:
        if self.use_intermediates:
            return self.net.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
        feat = self.net.forward_features(x)
        if feat.ndim != 4:
            raise RuntimeError(f"backbone gives a {feat.ndim}-d output, not a (B, C, H, W) feature map")
        return feat
