"""The paper's multi-attention CNN (section 2.3): a convolutional head, a body of three parallel
attention branches (CBAM, multi-head self-attention, slot attention) and a fully connected tail.

Every block is a small module with explicit arguments, so the ablations (any subset of the three
branches) and the backbone variant (the same body on a timm model's last feature map) are just
constructor arguments. Attention maps are returned on request rather than stored on the modules,
so no module keeps tensors (or autograd graphs) alive between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from torch import Tensor, nn

from lsdc.errors import ConfigError
from lsdc.models.weights import load_pretrained

__all__ = [
    "BRANCHES",
    "CBAM",
    "AttentionConfig",
    "AttentionBody",
    "AttentionHead",
    "ChannelAttention",
    "ClassifierTail",
    "ConvBnAct",
    "EnhancedInception",
    "LssAttentionNet",
    "MHSA2d",
    "MultiHeadSelfAttention",
    "SeparableConvBnAct",
    "SlotAttention",
    "SpatialAttention",
    "TimmFeatureBackbone",
]

PosEmbed = Literal["none", "sincos"]
SlotPool = Literal["mean", "flatten"]
BRANCHES = ("cbam", "mhsa", "slot")  # the body's attention branches, in the paper's order


# ---------------------------------------------------------------------------------------------
# Head: 7x7 conv-BN-ReLU blocks, max-pooling, Enhanced Inception Modules
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Body branch 1: CBAM (Algorithm 1)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Body branch 2: multi-head self-attention (Algorithm 2)
# ---------------------------------------------------------------------------------------------


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention over tokens, ``num_heads`` heads, fused q/k/v projection
    (bias-free by default, as in timm: the softmax ignores a key bias, so it would never train).

    (B, N, C) -> (B, N, C); with ``return_attention`` also the weights (B, heads, N, N), each row
    summing to one over keys. Without it the fused SDPA kernel is used (same result, faster).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        drop = self.attn_drop if self.training else 0.0
        attn = None
        if return_attention:
            attn = (q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1)
            out = F.dropout(attn, drop, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
        return (out, attn) if return_attention else out


class MHSA2d(nn.Module):
    """Self-attention on a feature map: H*W tokens (+ optional 2D sin-cos position embedding),
    pre-LayerNorm, multi-head attention, reshaped back (Algorithm 2).

    (B, C, H, W) -> (B, C, H, W); with ``return_attention`` also (B, heads, H*W, H*W).
    """

    def __init__(self, dim: int, num_heads: int = 8, pos_embed: PosEmbed = "sincos", attn_drop: float = 0.0) -> None:
        super().__init__()
        if pos_embed not in ("none", "sincos"):
            raise ConfigError(f"pos_embed must be 'none' or 'sincos', got {pos_embed!r}")
        if pos_embed == "sincos" and dim % 4:
            raise ConfigError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
        self.pos_embed = pos_embed
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, attn_drop=attn_drop)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.pos_embed == "sincos":
            tokens = tokens + build_sincos2d_pos_embed([h, w], c, device=x.device, dtype=x.dtype)
        tokens = self.norm(tokens)
        if return_attention:
            out, attn = self.attn(tokens, return_attention=True)
            return out.transpose(1, 2).reshape(b, c, h, w), attn
        return self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)


# ---------------------------------------------------------------------------------------------
# Body branch 3: slot attention (Algorithm 3, Locatello et al. 2020)
# ---------------------------------------------------------------------------------------------


class SlotAttention(nn.Module):
    """Slot attention: ``num_slots`` slots compete for tokens and are refined ``iters`` times.

    Slots start at a learned per-slot mean, plus learned-scale noise while training (the mean alone
    in eval, for deterministic predictions). Each iteration: LayerNorm, softmax over the SLOTS axis
    of the q.k logits (so slots compete for each token), a weighted mean of values over tokens, a
    GRU update and a residual MLP. (B, N, in_dim) -> slots (B, num_slots, slot_dim); with
    ``return_attention`` also the last masks (B, num_slots, N), summing to one over slots.
    """

    def __init__(
        self,
        in_dim: int,
        slot_dim: int = 128,
        num_slots: int = 4,
        iters: int = 3,
        mlp_ratio: float = 2.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if num_slots < 1 or iters < 1:
            raise ConfigError(f"slot attention needs num_slots >= 1 and iters >= 1, got {num_slots}, {iters}")
        self.num_slots = num_slots
        self.iters = iters
        self.eps = eps
        self.scale = slot_dim**-0.5
        self.slots_mu = nn.Parameter(torch.randn(1, num_slots, slot_dim))
        self.slots_log_sigma = nn.Parameter(torch.full((1, 1, slot_dim), -1.0))
        self.norm_input = nn.LayerNorm(in_dim)
        self.norm_slots = nn.LayerNorm(slot_dim)
        self.to_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.to_k = nn.Linear(in_dim, slot_dim, bias=False)
        self.to_v = nn.Linear(in_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        hidden = int(slot_dim * mlp_ratio)
        self.norm_mlp = nn.LayerNorm(slot_dim)
        self.mlp = nn.Sequential(nn.Linear(slot_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, slot_dim))

    def init_slots(self, batch: int) -> Tensor:
        """Initial slots (B, num_slots, slot_dim): mu + sigma * noise in training, mu in eval."""
        mu = self.slots_mu.expand(batch, -1, -1)
        if not self.training:
            return mu
        return mu + self.slots_log_sigma.exp() * torch.randn_like(mu)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        b, _, _ = x.shape
        x = self.norm_input(x)
        k, v = self.to_k(x), self.to_v(x)  # (B, N, D)
        slots = self.init_slots(b)
        attn = x.new_empty(0)
        for _ in range(self.iters):
            slots_prev = slots
            q = self.to_q(self.norm_slots(slots))  # (B, S, D)
            attn = (q @ k.transpose(1, 2) * self.scale).softmax(dim=1)  # (B, S, N), over slots
            weights = attn + self.eps
            weights = weights / weights.sum(dim=-1, keepdim=True)  # weighted mean over tokens
            updates = weights @ v  # (B, S, D)
            slots = self.gru(updates.flatten(0, 1), slots_prev.flatten(0, 1)).reshape(b, self.num_slots, -1)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return (slots, attn) if return_attention else slots


# ---------------------------------------------------------------------------------------------
# Body and tail
# ---------------------------------------------------------------------------------------------


class AttentionBody(nn.Module):
    """The three parallel attention branches on one feature map, each pooled, then concatenated.

    CBAM and MHSA maps are global-average pooled to (B, C); slots are averaged (B, slot_dim) or
    flattened (B, num_slots * slot_dim). Any non-empty subset of branches can be switched on (the
    paper's ablations). (B, C, H, W) -> (B, out_features); with ``return_attention`` also a dict
    of maps: "cbam_spatial" (B, 1, H, W), "mhsa" (B, heads, HW, HW), "slot" (B, slots, H, W).
    """

    def __init__(
        self,
        channels: int,
        use_cbam: bool = True,
        use_mhsa: bool = True,
        use_slot: bool = True,
        reduction: int = 16,
        spatial_kernel_size: int = 7,
        num_heads: int = 8,
        pos_embed: PosEmbed = "sincos",
        attn_drop: float = 0.0,
        num_slots: int = 4,
        slot_dim: int = 128,
        slot_iters: int = 3,
        slot_pool: SlotPool = "mean",
    ) -> None:
        super().__init__()
        if not (use_cbam or use_mhsa or use_slot):
            raise ConfigError("at least one of use_cbam, use_mhsa, use_slot must be true")
        if slot_pool not in ("mean", "flatten"):
            raise ConfigError(f"slot_pool must be 'mean' or 'flatten', got {slot_pool!r}")
        self.cbam = CBAM(channels, reduction, spatial_kernel_size) if use_cbam else None
        self.mhsa = MHSA2d(channels, num_heads, pos_embed, attn_drop) if use_mhsa else None
        self.slot = SlotAttention(channels, slot_dim, num_slots, slot_iters) if use_slot else None
        self.slot_pool = slot_pool
        slot_features = slot_dim * (num_slots if slot_pool == "flatten" else 1)
        self.out_features = channels * (int(use_cbam) + int(use_mhsa)) + (slot_features if use_slot else 0)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        b, _, h, w = x.shape
        feats: list[Tensor] = []
        maps: dict[str, Tensor] = {}
        if self.cbam is not None:
            out, maps["cbam_spatial"] = self.cbam(x, return_attention=True)
            feats.append(out.mean(dim=(2, 3)))
        if self.mhsa is not None:
            if return_attention:
                out, maps["mhsa"] = self.mhsa(x, return_attention=True)
            else:
                out = self.mhsa(x)
            feats.append(out.mean(dim=(2, 3)))
        if self.slot is not None:
            slots, masks = self.slot(x.flatten(2).transpose(1, 2), return_attention=True)
            maps["slot"] = masks.reshape(b, -1, h, w)
            feats.append(slots.mean(dim=1) if self.slot_pool == "mean" else slots.flatten(1))
        feat = torch.cat(feats, dim=1)
        return (feat, maps) if return_attention else feat


class ClassifierTail(nn.Module):
    """The paper's tail: [Linear -> LayerNorm -> ReLU -> Dropout] per width, then a Linear to logits.

    (B, in_features) -> (B, num_classes).
    """

    def __init__(
        self, in_features: int, widths: tuple[int, ...] = (256,), num_classes: int = 3, drop_rate: float = 0.5
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chs = in_features
        for width in widths:
            layers += [nn.Linear(chs, width), nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            chs = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(chs, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(x))


@dataclass
class AttentionConfig:
    """The attention model's settings (``model.attention`` in a config), passed as one to the network.

    The defaults are the paper's network at 224 px: 7x7 head convs, two Enhanced Inception Modules
    (14 x 14 tokens), CBAM, 8-head self-attention and 4 slots in parallel, one 256-wide tail layer.
    ``backbone`` puts the same body on a timm model's last feature map instead of the paper's head.
    """

    use_cbam: bool = True
    use_mhsa: bool = True
    use_slot: bool = True
    backbone: str | None = None
    backbone_pretrained_path: str | None = None
    head_widths: tuple[int, ...] = (32, 64)
    head_strides: tuple[int, ...] = (2, 2)
    head_kernel_size: int = 7
    eim_widths: tuple[int, ...] = (192, 384)
    eim_kernel_sizes: tuple[int, ...] = (3, 5)
    eim_project: bool = True
    reduction: int = 16
    spatial_kernel_size: int = 7
    num_heads: int = 8
    pos_embed: PosEmbed = "sincos"
    attn_drop: float = 0.0
    num_slots: int = 4
    slot_dim: int = 128
    slot_iters: int = 3
    slot_pool: SlotPool = "mean"
    tail_widths: tuple[int, ...] = (256,)

    @property
    def branches_off(self) -> tuple[str, ...]:
        """Attention branches switched off ("cbam", "mhsa", "slot"): the paper's ablations."""
        return tuple(b for b in BRANCHES if not getattr(self, f"use_{b}"))


class LssAttentionNet(nn.Module):
    """Head -> body (CBAM | MHSA | slot attention, in parallel) -> tail, as in the paper (Fig. 3).

    Every setting of the architecture comes in ``cfg`` (see :class:`AttentionConfig`).
    ``forward``: (B, in_chans, H, W) -> logits (B, num_classes). ``forward_with_attention`` also
    returns the attention maps of the enabled branches (see ``AttentionBody``).
    """

    def __init__(self, num_classes: int = 3, in_chans: int = 3, cfg: AttentionConfig | None = None,
                 drop_rate: float = 0.5) -> None:
        super().__init__()
        cfg = cfg or AttentionConfig()
        if not (cfg.use_cbam or cfg.use_mhsa or cfg.use_slot):
            raise ConfigError("at least one of use_cbam, use_mhsa, use_slot must be true")
        self.num_classes = num_classes
        if cfg.backbone is None:
            self.head: nn.Module = AttentionHead(
                in_chans=in_chans,
                widths=tuple(cfg.head_widths),
                strides=tuple(cfg.head_strides),
                kernel_size=cfg.head_kernel_size,
                eim_widths=tuple(cfg.eim_widths),
                eim_kernel_sizes=tuple(cfg.eim_kernel_sizes),
                eim_project=cfg.eim_project,
            )
        else:
            self.head = TimmFeatureBackbone(cfg.backbone, in_chans, cfg.backbone_pretrained_path)
        self.body = AttentionBody(
            self.head.out_chs,
            use_cbam=cfg.use_cbam,
            use_mhsa=cfg.use_mhsa,
            use_slot=cfg.use_slot,
            reduction=cfg.reduction,
            spatial_kernel_size=cfg.spatial_kernel_size,
            num_heads=cfg.num_heads,
            pos_embed=cfg.pos_embed,
            attn_drop=cfg.attn_drop,
            num_slots=cfg.num_slots,
            slot_dim=cfg.slot_dim,
            slot_iters=cfg.slot_iters,
            slot_pool=cfg.slot_pool,
        )
        self.num_features = self.body.out_features
        self.tail = ClassifierTail(self.num_features, tuple(cfg.tail_widths), num_classes, drop_rate)

    def get_classifier(self) -> nn.Module:
        """The final Linear (timm's convention), whose weights a pretrained load may skip."""
        return self.tail.fc

    def forward_features(self, x: Tensor) -> Tensor:
        """Head feature map: (B, in_chans, H, W) -> (B, C, h, w)."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.body(self.head(x)))

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits (B, num_classes) and the enabled branches' attention maps, for visualisation."""
        feat, maps = self.body(self.head(x), return_attention=True)
        return self.tail(feat), maps
