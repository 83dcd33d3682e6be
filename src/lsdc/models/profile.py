"""Model size: parameter and multiply-accumulate counts, to report each model's cost beside its score.

MACs are counted by ``torch.utils.flop_counter`` (convolutions and matrix products, which dominate;
normalisation and activations are not counted) with attention forced onto the math kernel, whose
matrix products the counter sees (it counts the fused CPU attention kernel as zero).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from lsdc.models.factory import ModelConfig, create_model

__all__ = ["count_macs", "count_macs_of", "count_parameters", "matmul_peak_flops", "model_summary"]


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


class _OpCounter(TorchDispatchMode):
    """FLOPs of every operation ``torch.utils.flop_counter`` knows (convolutions, matrix products, attention),
    without FlopCounterMode's per-module tracking, which fails under ``torch.no_grad`` (as prediction runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        return out


def count_macs_of(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Multiply-accumulates of every convolution and matrix product ``fn()`` runs (a whole prediction, say,
    under ``torch.no_grad``), and what it returned."""
    counter = _OpCounter()
    with sdpa_kernel(SDPBackend.MATH), counter:
        out = fn()
    return counter.flops // 2, out


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Floating-point operations per second of a float32 ``n x n`` matrix product on the CPU at the current
    torch thread count (the best of ``repeats``): the ceiling that a count of multiply-adds is divided by."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)   # warm-up: threads started, memory touched
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


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
