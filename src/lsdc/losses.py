"""Training losses: the crops' pooled weighted cross-entropy, and the same loss shaped as the official metric.

The metric (``lsdc.metric``) averages four terms: the weighted log loss of the spinal, the foraminal and the
subarticular rows, each normalised within its group, and ``any_severe_spinal``, a binary log loss per study
on the largest severe probability of its spinal rows. Pooling every crop's cross-entropy (``crops``) lets
the subarticular and foraminal crops (four fifths of them) outweigh the spinal ones, which through the
spinal term and any-severe decide half the score, and nothing trains the any-severe term. ``metric`` computes
the batch's score the metric's way: on a batch holding whole studies it equals ``lsdc.metric.score`` of the
batch's softmax (clipping aside), so its gradient is the score's.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lsdc import schema
from lsdc.experiment import COND_INDEX

LOSSES = ("crops", "metric")
Loss = Literal["crops", "metric"]

# Metric group of each condition index (the order of schema.GROUPS), and the spinal group's index.
COND_GROUP = torch.tensor([schema.GROUPS.index(schema.CONDITION_INFO[c].group) for c in schema.CONDITIONS])
SPINAL = schema.GROUPS.index(next(i.group for i in schema.CONDITION_INFO.values() if i.side is None))
SEVERE = len(schema.SEVERITY_COLUMNS) - 1
_SPINAL_CONDS = [COND_INDEX[c] for c, i in schema.CONDITION_INFO.items() if i.side is None]


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of (B, K) logits averaged with per-class weights (sum w_i ce_i / sum w_i), as the
    metric weights a group's rows; the plain mean without weights."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    if weights is None:
        return ce.mean()
    w = weights[target]
    return (w * ce).sum() / w.sum()


def any_severe_term(logits: torch.Tensor, target: torch.Tensor, cond: torch.Tensor, study: torch.Tensor,
                    weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The any-severe-spinal term's summed weighted loss and summed weight over the batch's studies, as the
    metric computes it: per study, the largest severe probability of its spinal crops against whether any is
    severe, weighted by the largest of their class weights. Both 0 when the batch has no spinal crop.

    logits (B, K) of each crop's condition; target, cond (B,); study (B,) the crop's study as an index
    0..S-1 (``numpy.unique(..., return_inverse=True)`` on the host: no device sync here).
    """
    spinal = torch.isin(cond, torch.as_tensor(_SPINAL_CONDS, device=cond.device))
    p = F.softmax(logits.float(), dim=1)[:, SEVERE] * spinal
    n = len(study)                                  # at least as many slots as studies

    def per_study(values: torch.Tensor) -> torch.Tensor:
        return p.new_zeros(n).scatter_reduce(0, study, values, reduce="amax")

    pred = per_study(p)
    label = per_study((target == SEVERE).float() * spinal)
    w = per_study(weights[target].float() * spinal)
    eps = torch.finfo(torch.float64).eps            # the metric's clipping (float32 rounds 1 - eps to 1)
    nll = F.binary_cross_entropy(pred.clamp(eps, 1 - eps), label, reduction="none")
    return (w * nll).sum(), w.sum()


def metric_loss(logits: torch.Tensor, target: torch.Tensor, cond: torch.Tensor, study: torch.Tensor,
                weights: torch.Tensor, any_severe_scalar: float = 1.0) -> torch.Tensor:
    """The batch's official score: each condition group's weighted cross-entropy normalised within the
    group, plus the any-severe term, averaged over the terms the batch has (``any_severe_scalar`` weighs
    the last, as the metric does). Without a host-device sync, so a GPU step stays asynchronous.

    logits (B, K) of each crop's condition; target, cond (B,); study (B,) study index 0..S-1; weights (K,).
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    w = weights[target].float()
    member = COND_GROUP.to(cond.device)[cond][None, :] == torch.arange(len(schema.GROUPS), device=cond.device)[:, None]
    w_group = (member * w).sum(1)                                          # (G,)
    group_terms = (member * w * ce).sum(1) / w_group.clamp_min(1e-12)
    loss, weight = any_severe_term(logits, target, cond, study, weights)
    terms = torch.cat([group_terms, (loss / weight.clamp_min(1e-12))[None]])
    scalars = torch.cat([torch.ones(len(schema.GROUPS), device=w.device), w.new_tensor([any_severe_scalar])])
    present = torch.cat([w_group, weight[None]]) > 0
    return (terms * scalars * present).sum() / (scalars * present).sum()
