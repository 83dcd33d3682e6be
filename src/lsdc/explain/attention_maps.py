"""What a model looked at for one crop: Grad-CAM of its predicted class and, for the paper's network,
the maps of its three attention branches (CBAM spatial, self-attention received, slot masks), every map
upsampled to the crop's size so it can be laid over the crop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lsdc.explain.gradcam import GradCam
from lsdc.models import LssAttentionNet

__all__ = ["CaseMaps", "explain"]


@dataclass
class CaseMaps:
    """A crop's explanation, every map at the crop's size (H, W).

    ``gradcam`` and ``cbam`` lie in [0, 1]; ``mhsa`` is the attention each pixel receives (mean over
    heads and query tokens), a distribution summing to 1; ``slots`` (S, H, W) sum to 1 over slots at
    every pixel. ``mhsa_tokens`` keeps the raw weights (heads, N, N), each row summing to 1.
    """

    probs: np.ndarray
    gradcam: np.ndarray
    cbam: np.ndarray | None = None
    mhsa: np.ndarray | None = None
    slots: np.ndarray | None = None
    mhsa_tokens: np.ndarray | None = None


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W), bilinear (a convex combination: ranges and sums over C are kept)."""
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0].cpu().numpy()


def explain(model: nn.Module, x: torch.Tensor, cond: int, k: int) -> CaseMaps:
    """Grad-CAM of the predicted class and, for the attention model, its branches' maps, for one crop."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    with GradCam(model) as gc:
        cam, probs = gc(x, cond, k)
    out = CaseMaps(probs=probs, gradcam=cam)
    if not isinstance(model, LssAttentionNet):
        return out
    with torch.no_grad():
        _, maps = model.forward_with_attention(x)
    if "cbam_spatial" in maps:
        out.cbam = np.clip(_upsample(maps["cbam_spatial"][0], size)[0], 0.0, 1.0)
    if "slot" in maps:
        slots = np.clip(_upsample(maps["slot"][0], size), 0.0, None)
        out.slots = slots / slots.sum(axis=0, keepdims=True)
    if "mhsa" in maps:
        attn = maps["mhsa"][0].float()                      # (heads, N, N)
        h, w = model.head(x).shape[-2:]
        received = attn.mean(dim=(0, 1)).reshape(1, h, w)  # sums to 1 over tokens
        up = np.clip(_upsample(received, size)[0], 0.0, None)
        out.mhsa = up / up.sum()
        out.mhsa_tokens = attn.cpu().numpy()
    return out

