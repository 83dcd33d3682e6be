"""The model output contract: one network for all five conditions outputs ``5 x K`` logits and the crop's
condition picks its ``K``; and the one formula that turns crops into the network's input."""

from __future__ import annotations

import numpy as np
import torch

from lsdc import schema

N_CONDITIONS = len(schema.CONDITIONS)
COND_INDEX: dict[str, int] = {c: i for i, c in enumerate(schema.CONDITIONS)}


def select_logits(logits: torch.Tensor, cond: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 5*K) logits and (B,) condition indices -> (B, K) logits of each crop's condition."""
    return logits.view(logits.shape[0], N_CONDITIONS, k)[torch.arange(len(cond), device=logits.device), cond]


def to_input(crops: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 crops (N, H, W, C) -> the network's float32 input (N, C, H, W), standardised per channel with
    the statistics of the fold that trained the model (training, inference and the report all use this).
    Any layout is accepted: flipped (negative strides) or strided views, read-only memory maps, any dtype."""
    a = np.ascontiguousarray(crops, dtype=np.float32)   # a fresh array unless already contiguous float32
    if not a.flags.writeable:   # torch.from_numpy warns on read-only memory (a float32 memory map passes through)
        a = a.copy()
    x = torch.from_numpy(a).permute(0, 3, 1, 2)
    return standardise(x, torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
                       ).contiguous()


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float crops (B, C, H, W) in [0, 255] -> the network's input, per channel with the fold's statistics
    (in [0, 1] units): the one formula for training, OOF and test crops, wherever the batch is."""
    return (x / 255.0 - mean[:, None, None]) / std[:, None, None]
