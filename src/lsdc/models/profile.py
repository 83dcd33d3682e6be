"""Model size: parameter and multiply-accumulate counts, to report each model's cost beside its score.

MACs are counted by ``torch.utils.flop_counter`` (convolutions and matrix products, which dominate;
normalisation and activations are not counted) with attention forced onto the math kernel, whose
matrix products the counter sees (it counts the fused CPU attention kernel as zero).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lsdc.models.factory import ModelConfig, create_model

__all__ = ["count_macs", "count_parameters", "model_summary"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a zero input of ``input_size``."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        # No torch.no_grad(): the counter's module tracker fails on views of parameters made there.
        with sdpa_kernel(SDPBackend.MATH), counter:
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_summary(cfg: ModelConfig, image_size: int = 224) -> dict[str, Any]:
    """{"name", "params", "macs", "input_size"} of the model ``cfg`` builds, at one image of that size."""
    model = create_model(cfg)
    input_size = (1, cfg.in_chans, image_size, image_size)
    return {
        "name": cfg.label,
        "params": count_parameters(model),
        "macs": count_macs(model, input_size),
        "input_size": list(input_size),
    }
