"""Model config, registry and factory: one ``ModelConfig`` builds the paper's attention model or any
timm model (the paper's baselines: densenet201, resnet101, ...), never downloading weights.

Pretrained weights come only from a local file (``pretrained_path``, see ``lsdc.models.weights``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
from torch import nn

from lsdc.errors import ConfigError
from lsdc.models.attention import LssAttentionNet
from lsdc.models.weights import load_pretrained

__all__ = ["ModelConfig", "create_model", "list_models", "register_model"]


@dataclass
class ModelConfig:
    """Which model to build. ``name``: "attention" (the paper's model) or any timm model name.

    The fields after ``drop_rate`` configure the attention model only (see ``LssAttentionNet``).
    """

    name: str = "attention"
    num_classes: int = 3
    in_chans: int = 3
    pretrained_path: str | None = None
    # None: 0.5 for the attention model's tail (paper 2.4.1), the timm default for timm models.
    drop_rate: float | None = None
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
    pos_embed: Literal["none", "sincos"] = "sincos"
    attn_drop: float = 0.0
    num_slots: int = 4
    slot_dim: int = 128
    slot_iters: int = 3
    slot_pool: Literal["mean", "flatten"] = "mean"
    tail_widths: tuple[int, ...] = (256,)


ModelBuilder = Callable[[ModelConfig], nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``create_model`` build ``name`` with the decorated ``fn(cfg) -> nn.Module``."""

    def decorate(fn: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorate


def list_models(include_timm: bool = False) -> list[str]:
    """Names ``create_model`` accepts: the registered models (and every timm model if asked)."""
    names = set(_REGISTRY)
    if include_timm:
        names |= set(timm.list_models())
    return sorted(names)


@register_model("attention")
def _build_attention(cfg: ModelConfig) -> nn.Module:
    return LssAttentionNet(
        num_classes=cfg.num_classes,
        in_chans=cfg.in_chans,
        use_cbam=cfg.use_cbam,
        use_mhsa=cfg.use_mhsa,
        use_slot=cfg.use_slot,
        backbone=cfg.backbone,
        backbone_pretrained_path=cfg.backbone_pretrained_path,
        head_widths=tuple(cfg.head_widths),
        head_strides=tuple(cfg.head_strides),
        head_kernel_size=cfg.head_kernel_size,
        eim_widths=tuple(cfg.eim_widths),
        eim_kernel_sizes=tuple(cfg.eim_kernel_sizes),
        eim_project=cfg.eim_project,
        reduction=cfg.reduction,
        spatial_kernel_size=cfg.spatial_kernel_size,
        num_heads=cfg.num_heads,
        pos_embed=cfg.pos_embed,
        attn_drop=cfg.attn_drop,
        num_slots=cfg.num_slots,
        slot_dim=cfg.slot_dim,
        slot_iters=cfg.slot_iters,
        slot_pool=cfg.slot_pool,
        tail_widths=tuple(cfg.tail_widths),
        drop_rate=0.5 if cfg.drop_rate is None else cfg.drop_rate,
    )


def _build_timm(cfg: ModelConfig) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes, "in_chans": cfg.in_chans}
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    return timm.create_model(cfg.name, pretrained=False, **kwargs)


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the model ``cfg.name`` (random init), then load ``cfg.pretrained_path`` if set."""
    if cfg.pretrained_path is not None and not Path(cfg.pretrained_path).is_file():
        raise ConfigError(f"pretrained_path {cfg.pretrained_path} does not exist")
    if cfg.name != "attention" and (cfg.backbone or cfg.backbone_pretrained_path):
        raise ConfigError(f"backbone/backbone_pretrained_path apply to name 'attention' only, not '{cfg.name}'")
    if cfg.name in _REGISTRY:
        model = _REGISTRY[cfg.name](cfg)
    elif timm.is_model(cfg.name):
        model = _build_timm(cfg)
    else:
        close = difflib.get_close_matches(cfg.name, list_models(include_timm=True), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model name '{cfg.name}' (use {', '.join(list_models())} or a timm model name){hint}"
        )
    if cfg.pretrained_path is not None:
        load_pretrained(model, cfg.pretrained_path)
    return model
