"""The paper's task and its metrics: one level (L4/L5), Normal/Mild against Severe, one crop per study,
condition and level; accuracy, precision, recall, F1 and AUC with Severe as the positive class.

Training (``train.task: paper``) and the report both use these definitions, so the numbers a run logs
are the numbers its report prints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from lsdc import schema

PAPER_CLASSES = ("normal_mild", "severe")               # probability columns of the binary task
CLASS_NAMES = (schema.SEVERITIES[0], schema.SEVERITIES[2])   # target 0 and 1
THRESHOLD = 0.5                                          # called severe when p(severe) >= this


def paper_targets(index: pd.DataFrame, level: str, moderate: str) -> pd.DataFrame:
    """The crops of the paper's task with a 0/1 ``target``: ``level`` only; Moderate dropped
    (``moderate='drop'``) or counted as severe (``'severe'``)."""
    index = index[index.level == level]
    if moderate == "drop":
        index = index[index.label != schema.SEVERITIES[1]]
    return index.assign(target=(index.label != schema.SEVERITIES[0]).astype(int))


def paper_scores(df: pd.DataFrame) -> dict[str, float]:
    """Paper metrics of predictions (columns ``target`` 0/1 and ``severe`` = p(severe)), with scikit-learn.

    precision/recall/f1 are of the severe class; f1_macro averages both classes' F1; auc is NaN with
    one class only.
    """
    y = df.target.to_numpy().astype(int)
    p = df.severe.to_numpy().astype(float)
    pred = (p >= THRESHOLD).astype(int)
    return {
        "n": int(len(y)),
        "severe": int(y.sum()),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "f1_macro": float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)),
        "auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan"),
    }


def paper_summary(df: pd.DataFrame) -> dict[str, Any]:
    """:func:`paper_scores` over all crops and per condition."""
    return {"overall": paper_scores(df),
            "per_condition": {c: paper_scores(g) for c, g in df.groupby("condition")}}


INTERVAL_METRICS = ("accuracy", "f1", "auc")   # the metrics the report gives 95% intervals for
RESAMPLE_CHUNK = 250                             # resamples weighed at once


def _weighted_auc(weights: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUC of scores ``p`` against 0/1 ``y`` with per-crop weights (B, n), one per resample: the weighted
    Mann-Whitney statistic, ties counted half (with integer weights, sklearn's AUC of the repeated crops)."""
    order = np.argsort(p, kind="stable")
    p, y, weights = p[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])          # tie groups of equal scores
    group = np.cumsum(np.r_[True, p[1:] != p[:-1]]) - 1
    neg = np.add.reduceat(weights * (y == 0), starts, axis=1)      # (B, groups) negative weight per group
    below = np.cumsum(neg, axis=1) - neg                            # negatives strictly below each group
    pos = y == 1
    wins = (weights[:, pos] * (below[:, group[pos]] + 0.5 * neg[:, group[pos]])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (weights[:, pos].sum(axis=1) * weights[:, ~pos].sum(axis=1))


def resampled_paper_scores(df: pd.DataFrame, studies: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, F1 of severe and AUC of predictions (``study_id``, ``target``, ``severe``) on each resample of
    ``studies`` (``counts``: (B, len(studies)) draws, :func:`lsdc.bootstrap.resample_counts`): a crop counts
    as often as its study was drawn. Equal to :func:`paper_scores` on the repeated crops."""
    pos = np.searchsorted(studies, df.study_id.to_numpy())
    y = df.target.to_numpy().astype(int)
    p = df.severe.to_numpy().astype(float)
    pred = (p >= THRESHOLD).astype(int)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in INTERVAL_METRICS}
    for start in range(0, len(counts), RESAMPLE_CHUNK):   # (chunk, n) weights at a time: memory stays bounded
        w = counts[start:start + RESAMPLE_CHUNK, pos]
        tp, fp, fn = (w @ ((pred == a) & (y == b)).astype(float) for a, b in ((1, 1), (1, 0), (0, 1)))
        with np.errstate(invalid="ignore", divide="ignore"):
            parts["accuracy"].append((w @ (pred == y).astype(float)) / w.sum(axis=1))
            parts["f1"].append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
        parts["auc"].append(_weighted_auc(w, y, p))
    return {m: np.concatenate(v) for m, v in parts.items()}
