"""Fitting a blend's weights and temperatures on OOF rows, and judging a fit on rows it was not fitted on.

The fit minimises, per group and on the OOF rows, that group's share of the official score: the group's
weighted log loss, plus ``any_severe_spinal`` for the spinal group (the spinal rows alone decide it). The
groups' parameters are disjoint, so this minimises the official score itself. Candidates: each single
model alone (T = 1) and L-BFGS-B fits (softmax-parametrised weights, log temperature) from the best single
model and from uniform weights, polished by Nelder-Mead; the lowest loss wins.

On the rows it was fitted on a fit always looks at least as good as its best member, so its score there
says nothing; :func:`nested_predictions` blends each fold's rows with what was fitted on the other folds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from threadpoolctl import threadpool_limits

from lsdc import metric, schema
from lsdc.ensemble.blend import apply_ensemble, combine
from lsdc.ensemble.frames import ROW_ID, SEV, model_frame, row_folds, row_groups
from lsdc.ensemble.spec import EnsembleSpec
from lsdc.errors import DataError

log = logging.getLogger(__name__)

SCORE = metric.SCORE_KEY
SEVERE_INDEX: int = SEV.index(metric.SEVERE_COLUMN)
FIT_OBJECTIVE = ("per group: the official weighted log loss of the group on OOF, "
                 f"plus {metric.ANY_SEVERE_KEY} for the {metric.SPINAL_GROUP} group")
LOG_T_BOUNDS = (math.log(0.25), math.log(8.0))  # beyond these a temperature only fits OOF noise
THETA_BOUNDS = (-30.0, 30.0)
BEST_START_GAP = 4.0               # softmax logit gap of the "best single model" start (~98% weight)


@dataclass
class GroupData:
    """One group's labeled OOF rows as arrays (spinal rows sorted by study for any_severe)."""

    probs: np.ndarray                    # (M, n, 3), normalised
    onehot: np.ndarray                   # (n, 3)
    weight: np.ndarray                   # (n,)
    starts: np.ndarray | None = None     # spinal: first row of each study
    any_onehot: np.ndarray | None = None  # spinal: (studies, 2) any-severe label
    any_weight: np.ndarray | None = None  # spinal: (studies,) largest row weight


def group_data(frames: Mapping[str, pd.DataFrame], solution: pd.DataFrame) -> dict[str, GroupData]:
    """The labeled rows of aligned, normalised model frames, per group."""
    first = next(iter(frames.values()))
    index = pd.Index(first[ROW_ID])
    pos = index.get_indexer(solution[ROW_ID].astype(str))
    allp = np.stack([df[SEV].to_numpy(dtype=np.float64)[pos] for df in frames.values()])
    onehot = solution[SEV].to_numpy(dtype=np.float64)
    weight = solution[metric.SAMPLE_WEIGHT].to_numpy(dtype=np.float64)
    ids = solution[ROW_ID].astype(str).tolist()
    groups = row_groups(ids)
    studies = np.array([schema.parse_row_id(r)[0] for r in ids], dtype=np.int64)
    data: dict[str, GroupData] = {}
    for group in schema.GROUPS:
        rows = np.flatnonzero(groups == group)
        if not len(rows):
            raise DataError(f"the OOF rows hold no labeled {group} row: the {group} loss is undefined")
        if group == metric.SPINAL_GROUP:
            rows = rows[np.argsort(studies[rows], kind="stable")]
            s = studies[rows]
            starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
            label = np.maximum.reduceat(onehot[rows, SEVERE_INDEX], starts)
            data[group] = GroupData(allp[:, rows], onehot[rows], weight[rows], starts,
                                    np.column_stack([1.0 - label, label]), np.maximum.reduceat(weight[rows], starts))
        else:
            data[group] = GroupData(allp[:, rows], onehot[rows], weight[rows])
    return data


def group_loss(data: GroupData, weights: np.ndarray, t: float) -> float:
    """The group's share of the official score (times the number of terms): its weighted log loss,
    plus any_severe_spinal for the spinal group, using the metric's own loss function."""
    present = np.ones(data.probs.shape[:2], dtype=bool)
    p = combine(data.probs, present, weights, t)
    loss = metric.weighted_nll(data.onehot, p, data.weight)
    if data.starts is not None:
        assert data.any_onehot is not None and data.any_weight is not None
        pred = np.maximum.reduceat(p[:, SEVERE_INDEX], data.starts)
        loss += metric.weighted_nll(data.any_onehot, np.column_stack([1.0 - pred, pred]), data.any_weight)
    return loss


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _prune(w: np.ndarray, min_weight: float) -> np.ndarray:
    """Weights below ``min_weight`` set to 0, the rest renormalised (a lone survivor gets exactly 1)."""
    w = np.where(w < min_weight, 0.0, w)
    if w.sum() <= 0:
        w = (np.arange(len(w)) == int(np.argmax(w))).astype(np.float64)
    return w / w.sum()


def fit_group(data: GroupData, best: int, temperature: bool, min_weight: float) -> tuple[np.ndarray, float, float]:
    """(weights, temperature, loss) of the lowest-loss candidate for one group."""
    m = data.probs.shape[0]
    candidates: list[tuple[float, np.ndarray, float]] = []
    for i in range(m):
        w = np.eye(m)[i]
        candidates.append((group_loss(data, w, 1.0), w, 1.0))
    if m > 1 or temperature:
        n_theta = m if m > 1 else 0

        def unpack(x: np.ndarray) -> tuple[np.ndarray, float]:
            w = _softmax(x[:n_theta]) if n_theta else np.ones(1)
            t = math.exp(float(np.clip(x[n_theta], *LOG_T_BOUNDS))) if temperature else 1.0
            return w, t

        def objective(x: np.ndarray) -> float:
            return group_loss(data, *unpack(x))

        starts = [np.where(np.arange(m) == best, 0.0, -BEST_START_GAP), np.zeros(m)] if n_theta else [np.zeros(0)]
        bounds = [THETA_BOUNDS] * n_theta + ([LOG_T_BOUNDS] if temperature else [])
        results = []
        for theta in starts:
            x0 = np.r_[theta, [0.0] if temperature else []]
            results.append(optimize.minimize(objective, x0, method="L-BFGS-B", bounds=bounds))
        top = min(results, key=lambda r: float(r.fun))
        polish = optimize.minimize(objective, top.x, method="Nelder-Mead",
                                   options={"xatol": 1e-5, "fatol": 1e-10, "maxiter": 300 * len(top.x)})
        for res in (*results, polish):
            w, t = unpack(np.asarray(res.x, dtype=np.float64))
            w = _prune(w, min_weight)
            candidates.append((group_loss(data, w, t), w, t))
    loss, w, t = min(candidates, key=lambda c: c[0])
    return w, t, loss


@dataclass
class Fit:
    """Per-group weights and temperatures fitted on some OOF rows, and the loss they reach there."""

    weights: dict[str, dict[str, float]]
    temperatures: dict[str, float]
    group_loss: dict[str, float]

    def spec(self, models: list[str]) -> EnsembleSpec:
        return EnsembleSpec(list(models), self.weights, self.temperatures)


def fit_blend(aligned: Mapping[str, pd.DataFrame], solution: pd.DataFrame, temperature: bool = True,
              min_weight: float = 1e-3, quiet: bool = False) -> Fit:
    """Fit the weights (and temperatures) of the aligned models on the labeled rows of ``solution``."""
    frames = {m: model_frame(df) for m, df in aligned.items()}
    models = list(frames)
    single = {m: metric.score(solution, frames[m])[SCORE] for m in models}
    best = min(models, key=lambda m: single[m])
    data = group_data(frames, solution)
    weights: dict[str, dict[str, float]] = {}
    temps: dict[str, float] = {}
    losses: dict[str, float] = {}
    for group in schema.GROUPS:
        # One BLAS thread: the fit's vectors are tiny and threaded BLAS calls in L-BFGS-B only spin
        # (3x slower on a busy 2-core machine). threadpoolctl comes with scikit-learn.
        with threadpool_limits(limits=1):
            w, t, loss = fit_group(data[group], models.index(best), temperature, min_weight)
        weights[group] = {m: float(x) for m, x in zip(models, w)}
        temps[group] = float(t)
        losses[group] = float(loss)
        if not quiet:
            log.info("%s: weights %s, T %.3f, loss %.5f", group,
                     ", ".join(f"{m} {x:.3f}" for m, x in weights[group].items()), t, loss)
    return Fit(weights, temps, losses)


def nested_predictions(aligned: Mapping[str, pd.DataFrame], solution: pd.DataFrame, folds: Mapping[int, int],
                       temperature: bool = True, min_weight: float = 1e-3) -> pd.DataFrame:
    """The blend's OOF predictions when each fold's rows are blended with weights and temperatures fitted
    on the other folds only: every row judged by a fit that never saw it. ``folds``: study_id -> fold;
    rows of studies without a fold are left out."""
    ids = next(iter(aligned.values()))[ROW_ID].astype(str)
    fold_of = row_folds(ids, folds)
    sol_fold = row_folds(solution[ROW_ID].astype(str), folds)
    pieces = []
    for fold in sorted(set(fold_of.tolist()) - {-1}):
        others = sol_fold != fold
        if not (others & (sol_fold != -1)).any():
            raise DataError(f"nested ensemble: fold {fold} is the only fold with labeled rows")
        fitted = fit_blend({m: df[fold_of != fold].reset_index(drop=True) for m, df in aligned.items()},
                           solution[others & (sol_fold != -1)].reset_index(drop=True), temperature, min_weight,
                           quiet=True)
        pieces.append(apply_ensemble(fitted.spec(list(aligned)), {m: df[fold_of == fold] for m, df in aligned.items()}))
    if not pieces:
        raise DataError("nested ensemble: none of the OOF studies has a fold")
    return pd.concat(pieces, ignore_index=True)
