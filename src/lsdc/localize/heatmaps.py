"""Heatmap logits: the training loss around a point, a slice's score and the decoded point."""

from __future__ import annotations

import numpy as np
import torch


def heatmap_loss(logits: torch.Tensor, points: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean cross-entropy between each map's spatial softmax and a Gaussian around its point.

    ``logits`` (N, h, w), ``points`` (N, 2) in heatmap cells (x, y).
    """
    n, h, w = logits.shape
    ys = torch.arange(h, device=logits.device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=logits.device, dtype=torch.float32)[None, :]
    d2 = (xs - points[:, 0, None, None]) ** 2 + (ys - points[:, 1, None, None]) ** 2
    target = torch.softmax((-d2 / (2 * sigma**2)).view(n, -1), dim=-1)
    return -(target * torch.log_softmax(logits.float().view(n, -1), dim=-1)).sum(-1).mean()


def slice_scores(logits: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) logits -> (n, C) slice scores: log-sum-exp over each map."""
    return torch.logsumexp(logits.float().flatten(2), dim=-1)


def decode(maps: np.ndarray) -> np.ndarray:
    """(K, h, w) logits -> (K, 2) points (x, y) in heatmap cells: softmax-weighted mean near the peak."""
    k, h, w = maps.shape
    flat = maps.reshape(k, -1).astype(np.float64)
    prob = np.exp(flat - flat.max(1, keepdims=True)).reshape(k, h, w)
    out = np.zeros((k, 2))
    for j in range(k):
        y0, x0 = np.unravel_index(np.argmax(prob[j]), (h, w))
        ya, yb, xa, xb = max(0, y0 - 2), min(h, y0 + 3), max(0, x0 - 2), min(w, x0 + 3)
        win = prob[j, ya:yb, xa:xb]
        gy, gx = np.mgrid[ya:yb, xa:xb]
        out[j] = ((gx * win).sum() / win.sum(), (gy * win).sum() / win.sum())
    return out
