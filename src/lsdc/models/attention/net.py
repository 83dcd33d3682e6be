"""The whole network: the head, a body of any subset of the three branches, and the fully connected tail;
its config (the ablations are constructor arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lsdc.errors import ConfigError
from lsdc.models.attention.cbam import CBAM
from lsdc.models.attention.head import AttentionHead, TimmFeatureBackbone
from lsdc.models.attention.mhsa import MHSA2d, PosEmbed
from lsdc.models.attention.slot import SlotAttention

SlotPool = Literal["mean", "flatten"]
BRANCHES = ("cbam", "mhsa", "slot")  # the body's attention branches, in the paper's order


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
