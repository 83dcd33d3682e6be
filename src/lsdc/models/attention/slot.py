"""Body branch 3: slot attention (the paper's Algorithm 3, Locatello et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsdc.errors import ConfigError


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
