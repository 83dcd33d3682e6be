"""Model config, registry and factory: one ``ModelConfig`` builds the paper's attention model or any
timm model (the paper's baselines: densenet201, resnet101, ...), never downloading weights.

Pretrained weights come only from a local file (``pretrained_path``, see ``lsdc.models.weights``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from torch import nn

from lsdc.errors import ConfigError
from lsdc.models.attention import AttentionConfig, LssAttentionNet
from lsdc.models.weights import load_pretrained

__all__ = ["ATTENTION", "ModelConfig", "create_model", "list_models", "register_model"]

ATTENTION = "attention"  # the registry name of the paper's model


@dataclass
class ModelConfig:
    """Which model to build. ``name``: "attention" (the paper's model) or any timm model name.

    ``attention`` configures the attention model only: a timm model ignores it (so one smoke config
    serves every model), except a ``backbone``, which only the attention model can take.
    """

    name: str = ATTENTION
    num_classes: int = 3
    in_chans: int = 3
    pretrained_path: str | None = None
    # None: 0.5 for the attention model's tail (paper 2.4.1), the timm default for timm models.
    drop_rate: float | None = None
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def without_pretrained(self) -> ModelConfig:
        """The same architecture without local weight files: a checkpoint's own weights follow."""
        return dataclasses.replace(self, pretrained_path=None,
                                   attention=dataclasses.replace(self.attention, backbone_pretrained_path=None))

    @property
    def label(self) -> str:
        """e.g. 'attention', 'attention[resnet18]', 'densenet201'."""
        if self.name == ATTENTION and self.attention.backbone is not None:
            return f"{ATTENTION}[{self.attention.backbone}]"
        return self.name


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


@register_model(ATTENTION)
def _build_attention(cfg: ModelConfig) -> nn.Module:
    drop = 0.5 if cfg.drop_rate is None else cfg.drop_rate
    return LssAttentionNet(num_classes=cfg.num_classes, in_chans=cfg.in_chans, cfg=cfg.attention, drop_rate=drop)


def _build_timm(cfg: ModelConfig) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes, "in_chans": cfg.in_chans}
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    return timm.create_model(cfg.name, pretrained=False, **kwargs)


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the model ``cfg.name`` (random init), then load ``cfg.pretrained_path`` if set."""
    if cfg.pretrained_path is not None and not Path(cfg.pretrained_path).is_file():
        raise ConfigError(f"pretrained_path {cfg.pretrained_path} does not exist")
    if cfg.name != ATTENTION:
        for key in ("backbone", "backbone_pretrained_path"):
            if getattr(cfg.attention, key) is not None:
                raise ConfigError(f"model.attention.{key} applies to name '{ATTENTION}' only, not '{cfg.name}'")
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
