"""Where an experiment runs: the device a config names, and the precision it computes in there."""

from __future__ import annotations

import os
from typing import Any

import torch

from lsdc.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'; 'auto' and 'cuda' mean the process's LOCAL_RANK
    GPU (cuda:0 outside torchrun). ConfigError when CUDA is asked for and absent."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name == "cuda":   # under torchrun each process its own GPU, not all of them on cuda:0
        name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {name!r} but no CUDA device is available")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"config key 'device': {name!r} is not a device (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def autocast(device: torch.device, enabled: bool) -> Any:
    """bfloat16 autocast on CUDA when enabled and the GPU computes in bfloat16 (Ampere and newer); a no-op
    context elsewhere. An older GPU (Kaggle's T4 and P100) would only emulate it, slower than float32, so it
    trains in float32 there (float16 would need loss scaling)."""
    if device.type == "cuda" and enabled and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)
