"""The combination rule, used on OOF when fitting and on test predictions at inference.

Per metric group ``g`` each model's row, normalised to sum to 1, is tempered ``p -> softmax(log p / T_g)``
and the models are averaged with weights ``w_g`` (non-negative, summing to 1), then the row is renormalised.
The arithmetic mean is chosen over the geometric one because it never lets one model's confident mistake
(a probability near 0) veto the others, which is what log loss punishes hardest. A row some model lacks is
blended from the models present, their weights renormalised (shared equally if all present models have
weight 0); a row no model covers comes back as NaN for the caller to fill.

At test time each model is K fold models, while each OOF row the spec was fitted on came from one of them.
:func:`blend_folds` combines the folds by one of :data:`FOLD_AVERAGES` (``predict.fold_average``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lsdc import metric, schema
from lsdc.ensemble.frames import ROW_ID, SEV, normalise, row_groups
from lsdc.ensemble.spec import EnsembleSpec, check_spec
from lsdc.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# How the fold models' probabilities of one experiment become its test prediction:
# "logits": the normalised geometric mean (mean log-probability), then tempered: as sharp as its members
#   where they agree (the default of predict.fold_average: best on the quality bench's test studies);
# "tempered": each fold tempered with the spec's temperature, then averaged: the average of exactly what the
#   spec was fitted on (one fold model per OOF row);
# "probs": averaged first, then tempered (an average is already softer than its members).
FOLD_AVERAGES = ("logits", "tempered", "probs")
FOLD_SEP = "#fold"   # pseudo-model name of one fold model in the "tempered" rule


def temper(probs: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / t) over the last axis; ``t == 1`` returns ``probs`` untouched (bit for bit)."""
    if t == 1.0:
        return probs
    z = np.log(np.clip(probs, metric.EPS, 1.0)) / t
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def combine(probs: np.ndarray, present: np.ndarray, weights: np.ndarray, t: float) -> np.ndarray:
    """Blend (M, n, 3) normalised probabilities of M models into (n, 3) for one group.

    ``present`` (M, n) marks which model predicted which row; absent entries of ``probs`` must be finite
    (they get weight 0). A row carried by one model alone is that model's tempered row unchanged, so a
    weight-1 ensemble reproduces the model's score exactly. Rows no model covers are NaN.
    """
    w = weights[None, :] * present.T                      # (n, M)
    total = w.sum(axis=1)
    even = (total == 0) & present.any(axis=0)
    w[even] = present.T[even]
    total = w.sum(axis=1)
    covered = total > 0
    w[covered] /= total[covered, None]
    tempered = temper(probs, t)
    out = np.einsum("nm,mnk->nk", w, tempered)
    out[covered] /= out[covered].sum(axis=1, keepdims=True)
    single = (w == 1.0).any(axis=1)
    if single.any():
        rows = np.flatnonzero(single)
        out[rows] = tempered[w[rows].argmax(axis=1), rows]
    out[~covered] = np.nan
    return out


def prediction_block(df: pd.DataFrame, row_ids: pd.Index, source: str) -> np.ndarray:
    """(n, 3) normalised probabilities of ``df`` on ``row_ids``; NaN rows where ``df`` has none."""
    missing = [c for c in schema.SUBMISSION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; got {list(df.columns)}")
    ids = df[ROW_ID].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise DataError(f"{source}: {len(dup)} duplicate {ROW_ID}(s), e.g. {dup[0]!r}")
    values = df[SEV].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    absent = np.isnan(values).any(axis=1)
    bad = ~absent & (~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (values.sum(axis=1) <= 0))
    if bad.any():
        raise DataError(f"{source}: infinite, negative or all-zero probabilities at {ROW_ID} "
                        f"{ids[bad].iloc[0]!r} ({int(bad.sum())} row(s))")
    values[absent] = np.nan
    values = normalise(values)
    frame = pd.DataFrame(values, index=pd.Index(ids, name=ROW_ID), columns=SEV)
    return frame.reindex(row_ids).to_numpy(dtype=np.float64)


def _union_rows(frames: Sequence[pd.DataFrame]) -> pd.Index:
    """The row ids of ``frames`` in first-appearance order; DataError on a malformed one."""
    row_ids = pd.Index(pd.unique(np.concatenate([f[ROW_ID].astype(str).to_numpy() for f in frames])))
    bad_ids = []
    for rid in row_ids:
        try:
            schema.parse_row_id(rid)
        except ValueError:
            bad_ids.append(rid)
    if bad_ids:
        raise DataError(f"predictions: {len(bad_ids)} malformed {ROW_ID}(s), e.g. {bad_ids[0]!r}")
    return row_ids


def apply_ensemble(spec: EnsembleSpec, predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Blend per-model submission-format frames into one submission-format frame.

    ``predictions`` maps model name to a frame ``row_id, normal_mild, moderate, severe``; models may
    cover different rows, and a row with NaN probabilities counts as not predicted by that model. The
    result holds the union of the rows (first appearance order) and sums to 1 per row, except rows no
    ensemble model predicted: those are NaN, for the caller to fill (e.g. with the class prior).
    Models not in the spec are ignored; a spec model with no frame hands its weight to the others.
    """
    check_spec(spec, "ensemble spec")
    used = [m for m in spec.models if m in predictions]
    if not used:
        raise DataError(f"none of the ensemble's models {spec.models} has predictions (got {list(predictions)})")
    for m in spec.models:
        if m not in predictions:
            log.warning("ensemble model %s has no predictions: its weight goes to the other models", m)
    row_ids = _union_rows([predictions[m] for m in used])
    probs = np.stack([prediction_block(predictions[m], row_ids, f"predictions of model {m!r}") for m in used])
    present = ~np.isnan(probs).any(axis=2)
    probs = np.where(present[..., None], probs, 1.0 / len(SEV))
    groups = row_groups(row_ids)
    out = np.full((len(row_ids), len(SEV)), np.nan)
    for group in schema.GROUPS:
        mask = groups == group
        if mask.any():
            w = np.array([spec.weights[group][m] for m in used], dtype=np.float64)
            out[mask] = combine(probs[:, mask], present[:, mask], w, spec.temperatures[group])
    result = pd.DataFrame({ROW_ID: row_ids.to_numpy()})
    result[SEV] = out
    return result


def average_folds(folds: Sequence[pd.DataFrame], rule: str) -> pd.DataFrame:
    """One model's fold frames as one frame, by ``rule`` "probs" (arithmetic mean) or "logits" (normalised
    geometric mean); each row over the folds that predicted it."""
    row_ids = _union_rows(folds)
    stack = np.stack([prediction_block(f, row_ids, "fold predictions") for f in folds])   # (F, n, 3)
    with np.errstate(invalid="ignore"):
        if rule == "probs":
            out = np.nanmean(stack, axis=0)
        elif rule == "logits":
            out = np.exp(np.nanmean(np.log(np.clip(stack, metric.EPS, 1.0)), axis=0))
            out /= out.sum(axis=1, keepdims=True)
        else:
            raise ConfigError(f"fold average {rule!r}: average_folds takes 'probs' or 'logits'")
    result = pd.DataFrame({ROW_ID: row_ids.to_numpy()})
    result[SEV] = out
    return result


def blend_folds(spec: EnsembleSpec, fold_predictions: Mapping[str, Sequence[pd.DataFrame]],
                rule: str = "logits") -> pd.DataFrame:
    """Blend models given as their fold models' frames (test time), the folds combined by ``rule``
    (:data:`FOLD_AVERAGES`). With one fold per model (the OOF) every rule is :func:`apply_ensemble`."""
    if rule not in FOLD_AVERAGES:
        raise ConfigError(f"config key 'fold_average': {rule!r} is not one of {list(FOLD_AVERAGES)}")
    if rule != "tempered":
        return apply_ensemble(spec, {m: average_folds(f, rule) for m, f in fold_predictions.items() if f})
    models, frames = [], {}
    weights: dict[str, dict[str, float]] = {g: {} for g in schema.GROUPS}
    for m in spec.models:
        for k, frame in enumerate(fold_predictions.get(m, [])):
            name = f"{m}{FOLD_SEP}{k}"
            models.append(name)
            frames[name] = frame
            for g in schema.GROUPS:
                weights[g][name] = spec.weights[g][m] / len(fold_predictions[m])
    if not models:
        raise DataError(f"none of the ensemble's models {spec.models} has predictions (got {list(fold_predictions)})")
    for g in schema.GROUPS:   # a model without predictions hands its weight on, as in apply_ensemble
        total = sum(weights[g].values())
        weights[g] = ({n: w / total for n, w in weights[g].items()} if total > 0
                      else {n: 1.0 / len(models) for n in models})
    return apply_ensemble(EnsembleSpec(models, weights, dict(spec.temperatures)), frames)
