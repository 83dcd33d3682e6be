"""Body branch 2: multi-head self-attention over the feature map's positions (the paper's Algorithm 2)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from torch import Tensor, nn

from lsdc.errors import ConfigError

PosEmbed = Literal["none", "sincos"]


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
