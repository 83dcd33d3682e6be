"""Compare experiments on their out-of-fold predictions and blend them into one ensemble.

Every experiment writes ``outputs/<name>/oof.csv`` in submission format over the same CV folds, so
their rows can be lined up and scored with the one official metric (:func:`lsdc.metric.score`).

Combination rule (:func:`apply_ensemble`, used on OOF here and on test predictions at inference):
per metric group ``g`` (spinal, foraminal, subarticular) each model's row, normalised to sum to 1, is
tempered ``p -> softmax(log p / T_g)`` and the models are averaged with weights ``w_g`` (non-negative,
summing to 1), then the row is renormalised. The arithmetic mean is chosen over the geometric one
because it never lets one model's confident mistake (a probability near 0) veto the others, which is
what log loss punishes hardest. A row some model lacks is blended from the models present, their
weights renormalised (shared equally if all present models have weight 0); a row no model covers
comes back as NaN for the caller to fill.

The fit (:func:`fit_ensemble`) minimises, per group and on the OOF rows, that group's share of the
official score: the group's weighted log loss, plus ``any_severe_spinal`` for the spinal group (the
spinal rows alone decide it). The groups' parameters are disjoint, so this minimises the official
score itself. Candidates: each single model alone (T = 1) and L-BFGS-B fits (softmax-parametrised
weights, log temperature) from the best single model and from uniform weights, polished by
Nelder-Mead; the lowest loss wins. Finally the ensemble's official OOF score must beat the best
single model's, or the spec falls back to that model alone (weight 1, T = 1), which reproduces its
score exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from threadpoolctl import threadpool_limits

from lsdc import metric, schema
from lsdc.errors import ConfigError, DataError
from lsdc.experiment import CONFIG_YAML, OOF_CSV, load_experiment_config
from lsdc.folds import folds_csv
from lsdc.io import write_csv, write_json, write_text
from lsdc.models import ATTENTION
from lsdc.stamps import digest, file_state, is_current, write_stamp

log = logging.getLogger(__name__)

TABLE_CSV = "oof_table.csv"
TABLE_MD = "oof_table.md"
SPEC_JSON = "ensemble.json"
SPEC_VERSION = 1

ENSEMBLE = "ensemble"              # the ensemble's row name and kind in the comparison table
NESTED = "ensemble (nested)"       # the ensemble with each fold blended by weights fitted on the other folds
UNKNOWN_KIND = "unknown"           # an experiment without a readable config.yaml model section
ABLATION_KIND = "ablation"         # the attention model with one of its components switched off
COMBINE_RULE = "weighted arithmetic mean of per-group tempered probabilities, renormalised per row"
FIT_OBJECTIVE = ("per group: the official weighted log loss of the group on OOF, "
                 f"plus {metric.ANY_SEVERE_KEY} for the {metric.SPINAL_GROUP} group")

ROW_ID = metric.ROW_ID
SEV: list[str] = list(schema.SEVERITY_COLUMNS)
SEVERE_INDEX: int = SEV.index(metric.SEVERE_COLUMN)
SCORE = metric.SCORE_KEY
TERMS: tuple[str, ...] = (SCORE, *metric.GROUP_KEYS, metric.ANY_SEVERE_KEY)
METRICS: tuple[str, ...] = ("acc", "f1", "auc")

WEIGHT_TOL = 1e-6                  # how far a saved group's weights may sum from 1
LOG_T_BOUNDS = (math.log(0.25), math.log(8.0))  # beyond these a temperature only fits OOF noise
THETA_BOUNDS = (-30.0, 30.0)
BEST_START_GAP = 4.0               # softmax logit gap of the "best single model" start (~98% weight)
MIN_GAIN = 1e-9                    # a blend must beat the best single model by more than rounding noise


@dataclass
class EnsembleConfig:
    """Settings of scripts/04_ensemble.py (``--config``/``--set`` keys)."""

    experiments: list[str] | None = None   # experiment folders to blend; None: every one with an oof.csv
    temperature: bool = True               # fit one temperature per group (False: T = 1)
    min_weight: float = 1e-3               # fitted weights below this become 0 (then renormalised)
    # The OOF each experiment is fitted on: oof.csv (crops at annotated points) or oof_localized.csv
    # (crops at held-out localiser points, from scripts/07_localized_oof.py: what test rows see).
    oof_file: str = OOF_CSV
    spec_file: str = SPEC_JSON             # where the fitted spec goes (05_predict.py reads ensemble.json)

    def check(self) -> None:
        if not 0.0 <= self.min_weight < 0.5:
            raise ConfigError(f"config key 'min_weight': {self.min_weight} is not in [0, 0.5)")
        if self.experiments is not None and not self.experiments:
            raise ConfigError("config key 'experiments': the list is empty")
        if not self.oof_file.endswith(".csv") or "/" in self.oof_file:
            raise ConfigError(f"config key 'oof_file': {self.oof_file!r} is not a CSV file name")
        if not self.spec_file.endswith(".json") or "/" in self.spec_file:
            raise ConfigError(f"config key 'spec_file': {self.spec_file!r} is not a JSON file name")


@dataclass
class EnsembleSpec:
    """A fitted ensemble: everything inference needs to blend per-model predictions, plus its OOF record."""

    models: list[str]                                   # experiment names, in blending order
    weights: dict[str, dict[str, float]]                # group -> model -> weight (>= 0, sum 1)
    temperatures: dict[str, float]                      # group -> T (> 0)
    experiments: dict[str, str] = field(default_factory=dict)   # model -> folder name under outputs/
    kinds: dict[str, str] = field(default_factory=dict)         # model -> attention, densenet201, ...
    oof_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> official terms
    ensemble_score: dict[str, float] = field(default_factory=dict)
    # The same fit judged out of fold: each fold blended with weights fitted on the other folds.
    nested_score: dict[str, float] = field(default_factory=dict)
    fallback: str | None = None                         # the single model fallen back to, if any
    fit: dict[str, Any] = field(default_factory=dict)   # objective, group losses, row counts
    combine: str = COMBINE_RULE
    version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- experiments and OOF frames


def discover_experiments(output_dir: str | os.PathLike, oof_file: str = OOF_CSV) -> dict[str, Path]:
    """Experiment name -> path of its ``oof_file``, for every ``output_dir/<name>/<oof_file>`` (sorted by name).

    Folders without one (crops, logs, paper-task or unfinished experiments) are skipped and logged.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise DataError(f"output folder {output_dir} does not exist")
    found: dict[str, Path] = {}
    skipped: list[str] = []
    for sub in sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        oof = sub / oof_file
        if oof.is_file():
            found[sub.name] = oof
        else:
            skipped.append(sub.name)
    if skipped:
        log.info("skipped %d folder(s) without %s in %s: %s", len(skipped), oof_file, output_dir, ", ".join(skipped))
    log.info("found %d experiment(s) in %s: %s", len(found), output_dir, ", ".join(found) or "none")
    return found


def experiment_kind(exp_dir: str | os.PathLike) -> str:
    """The model kind of an experiment from its config.yaml: the model name, or ``ablation`` for the
    attention model with an attention branch switched off."""
    try:
        model = load_experiment_config(exp_dir).model
    except DataError as exc:
        log.warning("%s (kind %r)", exc, UNKNOWN_KIND)
        return UNKNOWN_KIND
    if model.name == ATTENTION and model.attention.branches_off:
        return ABLATION_KIND
    return model.name


def read_oof(path: str | os.PathLike) -> pd.DataFrame:
    """An experiment's oof.csv, validated as a submission (errors name the file)."""
    return metric.read_submission(path)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Rows divided by their sum: the one normalisation both single-model scoring and the blend use,
    so a model blended alone gives bit-identical rows and hence exactly its own score."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    return values / values.sum(axis=1, keepdims=True)


def _model_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A model's frame as the blend sees it: row_id + normalised probabilities."""
    out = pd.DataFrame({ROW_ID: df[ROW_ID].astype(str).to_numpy()})
    out[SEV] = _normalise(df[SEV].to_numpy(dtype=np.float64))
    return out


def align_oofs(oofs: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The experiments' OOF frames on the rows all of them share, in the same row order (values as read).

    Experiments trained on other studies lose their extra rows (logged per experiment); DataError if
    they share no row at all.
    """
    if not oofs:
        raise DataError("no experiment OOF predictions to compare or ensemble")
    for name, df in oofs.items():
        metric.validate_submission(df, source=f"experiment {name!r} OOF predictions")
    common = set.intersection(*(set(df[ROW_ID].astype(str)) for df in oofs.values()))
    if not common:
        raise DataError(f"experiments {list(oofs)} share no OOF row: they were trained on different studies "
                        "(check --output-dir and the experiments' folds)")
    first = next(iter(oofs.values()))
    order = [r for r in first[ROW_ID].astype(str) if r in common]
    aligned: dict[str, pd.DataFrame] = {}
    for name, df in oofs.items():
        dropped = len(df) - len(order)
        if dropped:
            log.warning("experiment %s: %d of its %d OOF rows dropped (not covered by every experiment); "
                        "%d rows kept", name, dropped, len(df), len(order))
        rows = df[list(schema.SUBMISSION_COLUMNS)].assign(**{ROW_ID: df[ROW_ID].astype(str)}).set_index(ROW_ID)
        aligned[name] = rows.loc[order].reset_index()
    return aligned


def _solution_for(labels: pd.DataFrame, row_ids: Sequence[str]) -> pd.DataFrame:
    """The scoring-format solution of the labeled rows among ``row_ids``.

    ``labels`` is a scoring-format solution or a train.csv-shaped frame.
    """
    wanted = set(row_ids)
    if set(metric.SOLUTION_COLUMNS) <= set(labels.columns):
        solution = labels[list(metric.SOLUTION_COLUMNS)]
    elif set(schema.TRAIN_COLUMNS) <= set(labels.columns):
        studies = {schema.parse_row_id(r)[0] for r in wanted}
        have = labels[labels[metric.STUDY_ID].isin(studies)]
        unknown = len(studies) - have[metric.STUDY_ID].nunique()
        if unknown:
            log.warning("%d of the %d OOF studies are not in the training labels", unknown, len(studies))
        solution = metric.solution_from_labels(have, source="training labels")
    else:
        raise DataError(f"labels: expected a scoring-format solution {list(metric.SOLUTION_COLUMNS)} or a "
                        f"train.csv-shaped frame; got columns {list(labels.columns)[:8]}")
    solution = solution[solution[ROW_ID].astype(str).isin(wanted)].reset_index(drop=True)
    if solution.empty:
        raise DataError(f"none of the {len(wanted)} OOF rows has a label in train.csv: is --data-dir the "
                        "data the experiments were trained on?")
    return solution


def _row_groups(row_ids: Sequence[str]) -> np.ndarray:
    """Metric group of each row id (valid ids assumed)."""
    return np.array([schema.CONDITION_INFO[schema.parse_row_id(r)[1]].group for r in row_ids], dtype=object)


# ----------------------------------------------------------------------------- combination


def _temper(probs: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / t) over the last axis; ``t == 1`` returns ``probs`` untouched (bit for bit)."""
    if t == 1.0:
        return probs
    z = np.log(np.clip(probs, metric.EPS, 1.0)) / t
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _combine(probs: np.ndarray, present: np.ndarray, weights: np.ndarray, t: float) -> np.ndarray:
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
    tempered = _temper(probs, t)
    out = np.einsum("nm,mnk->nk", w, tempered)
    out[covered] /= out[covered].sum(axis=1, keepdims=True)
    single = (w == 1.0).any(axis=1)
    if single.any():
        rows = np.flatnonzero(single)
        out[rows] = tempered[w[rows].argmax(axis=1), rows]
    out[~covered] = np.nan
    return out


def _prediction_block(df: pd.DataFrame, row_ids: pd.Index, source: str) -> np.ndarray:
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
    values = _normalise(values)
    frame = pd.DataFrame(values, index=pd.Index(ids, name=ROW_ID), columns=SEV)
    return frame.reindex(row_ids).to_numpy(dtype=np.float64)


def apply_ensemble(spec: EnsembleSpec, predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Blend per-model submission-format frames into one submission-format frame.

    ``predictions`` maps model name to a frame ``row_id, normal_mild, moderate, severe``; models may
    cover different rows, and a row with NaN probabilities counts as not predicted by that model. The
    result holds the union of the rows (first appearance order) and sums to 1 per row, except rows no
    ensemble model predicted: those are NaN, for the caller to fill (e.g. with the class prior).
    Models not in the spec are ignored; a spec model with no frame hands its weight to the others.
    """
    _check_spec(spec, "ensemble spec")
    used = [m for m in spec.models if m in predictions]
    if not used:
        raise DataError(f"none of the ensemble's models {spec.models} has predictions (got {list(predictions)})")
    for m in spec.models:
        if m not in predictions:
            log.warning("ensemble model %s has no predictions: its weight goes to the other models", m)
    row_ids = pd.Index(pd.unique(np.concatenate([predictions[m][ROW_ID].astype(str).to_numpy() for m in used])))
    bad_ids = []
    for rid in row_ids:
        try:
            schema.parse_row_id(rid)
        except ValueError:
            bad_ids.append(rid)
    if bad_ids:
        raise DataError(f"predictions: {len(bad_ids)} malformed {ROW_ID}(s), e.g. {bad_ids[0]!r}")
    probs = np.stack([_prediction_block(predictions[m], row_ids, f"predictions of model {m!r}") for m in used])
    present = ~np.isnan(probs).any(axis=2)
    probs = np.where(present[..., None], probs, 1.0 / len(SEV))
    groups = _row_groups(row_ids)
    out = np.full((len(row_ids), len(SEV)), np.nan)
    for group in schema.GROUPS:
        mask = groups == group
        if mask.any():
            w = np.array([spec.weights[group][m] for m in used], dtype=np.float64)
            out[mask] = _combine(probs[:, mask], present[:, mask], w, spec.temperatures[group])
    result = pd.DataFrame({ROW_ID: row_ids.to_numpy()})
    result[SEV] = out
    return result


# ----------------------------------------------------------------------------- fitting


@dataclass
class _GroupData:
    """One group's labeled OOF rows as arrays (spinal rows sorted by study for any_severe)."""

    probs: np.ndarray                    # (M, n, 3), normalised
    onehot: np.ndarray                   # (n, 3)
    weight: np.ndarray                   # (n,)
    starts: np.ndarray | None = None     # spinal: first row of each study
    any_onehot: np.ndarray | None = None  # spinal: (studies, 2) any-severe label
    any_weight: np.ndarray | None = None  # spinal: (studies,) largest row weight


def _group_data(aligned: Mapping[str, pd.DataFrame], solution: pd.DataFrame) -> dict[str, _GroupData]:
    first = next(iter(aligned.values()))
    index = pd.Index(first[ROW_ID])
    pos = index.get_indexer(solution[ROW_ID].astype(str))
    allp = np.stack([df[SEV].to_numpy(dtype=np.float64)[pos] for df in aligned.values()])
    onehot = solution[SEV].to_numpy(dtype=np.float64)
    weight = solution[metric.SAMPLE_WEIGHT].to_numpy(dtype=np.float64)
    ids = solution[ROW_ID].astype(str).tolist()
    groups = _row_groups(ids)
    studies = np.array([schema.parse_row_id(r)[0] for r in ids], dtype=np.int64)
    data: dict[str, _GroupData] = {}
    for group in schema.GROUPS:
        rows = np.flatnonzero(groups == group)
        if not len(rows):
            raise DataError(f"the OOF rows hold no labeled {group} row: the {group} loss is undefined")
        if group == metric.SPINAL_GROUP:
            rows = rows[np.argsort(studies[rows], kind="stable")]
            s = studies[rows]
            starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
            label = np.maximum.reduceat(onehot[rows, SEVERE_INDEX], starts)
            data[group] = _GroupData(allp[:, rows], onehot[rows], weight[rows], starts,
                                     np.column_stack([1.0 - label, label]), np.maximum.reduceat(weight[rows], starts))
        else:
            data[group] = _GroupData(allp[:, rows], onehot[rows], weight[rows])
    return data


def _group_loss(data: _GroupData, weights: np.ndarray, t: float) -> float:
    """The group's share of the official score (times the number of terms): its weighted log loss,
    plus any_severe_spinal for the spinal group, using the metric's own loss function."""
    present = np.ones(data.probs.shape[:2], dtype=bool)
    p = _combine(data.probs, present, weights, t)
    loss = metric._weighted_nll(data.onehot, p, data.weight)
    if data.starts is not None:
        assert data.any_onehot is not None and data.any_weight is not None
        pred = np.maximum.reduceat(p[:, SEVERE_INDEX], data.starts)
        loss += metric._weighted_nll(data.any_onehot, np.column_stack([1.0 - pred, pred]), data.any_weight)
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


def _fit_group(data: _GroupData, best: int, temperature: bool, min_weight: float) -> tuple[np.ndarray, float, float]:
    """(weights, temperature, loss) of the lowest-loss candidate for one group."""
    m = data.probs.shape[0]
    candidates: list[tuple[float, np.ndarray, float]] = []
    for i in range(m):
        w = np.eye(m)[i]
        candidates.append((_group_loss(data, w, 1.0), w, 1.0))
    if m > 1 or temperature:
        n_theta = m if m > 1 else 0

        def unpack(x: np.ndarray) -> tuple[np.ndarray, float]:
            w = _softmax(x[:n_theta]) if n_theta else np.ones(1)
            t = math.exp(float(np.clip(x[n_theta], *LOG_T_BOUNDS))) if temperature else 1.0
            return w, t

        def objective(x: np.ndarray) -> float:
            return _group_loss(data, *unpack(x))

        starts = []
        if n_theta:
            starts.append(np.where(np.arange(m) == best, 0.0, -BEST_START_GAP))
            starts.append(np.zeros(m))
        else:
            starts.append(np.zeros(0))
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
            candidates.append((_group_loss(data, w, t), w, t))
    loss, w, t = min(candidates, key=lambda c: c[0])
    return w, t, loss


def equal_spec(models: list[str]) -> EnsembleSpec:
    """Every model with the same weight in every group, T = 1: the blend when none was fitted."""
    w = {g: {m: 1.0 / len(models) for m in models} for g in schema.GROUPS}
    return EnsembleSpec(models=list(models), weights=w, temperatures={g: 1.0 for g in schema.GROUPS},
                        experiments={m: m for m in models})


def _single_spec(models: list[str], chosen: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    weights = {g: {m: float(m == chosen) for m in models} for g in schema.GROUPS}
    return weights, {g: 1.0 for g in schema.GROUPS}


@dataclass
class _Fit:
    """Per-group weights and temperatures fitted on some OOF rows (the single best model when no blend
    beats it there)."""

    weights: dict[str, dict[str, float]]
    temperatures: dict[str, float]
    group_loss: dict[str, float]
    best: str
    single: dict[str, dict[str, float]]
    score: dict[str, float]
    fallback: str | None


def _fit(aligned: Mapping[str, pd.DataFrame], solution: pd.DataFrame, temperature: bool, min_weight: float,
         quiet: bool = False) -> _Fit:
    """The fitting procedure of :func:`fit_ensemble` on aligned OOF frames and their solution."""
    frames = {m: _model_frame(df) for m, df in aligned.items()}
    models = list(frames)
    single = {m: metric.score(solution, frames[m]) for m in models}
    best = min(models, key=lambda m: single[m][SCORE])
    data = _group_data(frames, solution)
    weights: dict[str, dict[str, float]] = {}
    temps: dict[str, float] = {}
    losses: dict[str, float] = {}
    for group in schema.GROUPS:
        # One BLAS thread: the fit's vectors are tiny and threaded BLAS calls in L-BFGS-B only spin
        # (3x slower on a busy 2-core machine). threadpoolctl comes with scikit-learn.
        with threadpool_limits(limits=1):
            w, t, loss = _fit_group(data[group], models.index(best), temperature, min_weight)
        weights[group] = {m: float(x) for m, x in zip(models, w)}
        temps[group] = float(t)
        losses[group] = float(loss)
        if not quiet:
            log.info("%s: weights %s, T %.3f, loss %.5f", group,
                     ", ".join(f"{m} {x:.3f}" for m, x in weights[group].items()), t, loss)
    spec = EnsembleSpec(models=models, weights=weights, temperatures=temps)
    score = metric.score(solution, apply_ensemble(spec, aligned))
    fallback = None
    if score[SCORE] > single[best][SCORE] - MIN_GAIN:
        if not quiet:
            log.info("the blend (%.5f) does not beat %s alone (%.5f): falling back to it",
                     score[SCORE], best, single[best][SCORE])
        weights, temps = _single_spec(models, best)
        losses = {g: _group_loss(data[g], np.eye(len(models))[models.index(best)], 1.0) for g in schema.GROUPS}
        score = metric.score(solution, apply_ensemble(EnsembleSpec(models, weights, temps), aligned))
        fallback = best
    return _Fit(weights, temps, losses, best, single, score, fallback)


def nested_score(aligned: Mapping[str, pd.DataFrame], solution: pd.DataFrame, folds: Mapping[int, int],
                 temperature: bool = True, min_weight: float = 1e-3) -> dict[str, float]:
    """The official score of the ensemble when each fold's rows are blended with weights and temperatures
    fitted on the other folds only: an honest estimate, where the in-sample score is fitted and scored on
    the same rows. ``folds``: study_id -> fold."""
    ids = next(iter(aligned.values()))[ROW_ID].astype(str)
    fold_of = np.array([folds.get(schema.parse_row_id(r)[0], -1) for r in ids])
    sol_fold = np.array([folds.get(schema.parse_row_id(r)[0], -1) for r in solution[ROW_ID].astype(str)])
    pieces = []
    for fold in sorted(set(fold_of) - {-1}):
        train_rows, held = fold_of != fold, fold_of == fold
        fitted = _fit({m: df[train_rows].reset_index(drop=True) for m, df in aligned.items()},
                      solution[sol_fold != fold].reset_index(drop=True), temperature, min_weight, quiet=True)
        spec = EnsembleSpec(list(aligned), fitted.weights, fitted.temperatures)
        pieces.append(apply_ensemble(spec, {m: df[held] for m, df in aligned.items()}))
    if not pieces:
        raise DataError("nested ensemble score: none of the OOF studies has a fold")
    return metric.score(solution[sol_fold != -1].reset_index(drop=True), pd.concat(pieces, ignore_index=True))


def fit_ensemble(
    oofs: Mapping[str, pd.DataFrame],
    labels: pd.DataFrame,
    *,
    temperature: bool = True,
    min_weight: float = 1e-3,
    kinds: Mapping[str, str] | None = None,
    experiments: Mapping[str, str] | None = None,
    folds: Mapping[int, int] | None = None,
) -> EnsembleSpec:
    """Fit per-group weights (and temperatures) on the experiments' OOF predictions.

    ``oofs``: experiment name -> OOF frame (submission format; aligned on their shared rows here).
    ``labels``: train.csv-shaped frame or scoring-format solution. The returned spec's ensemble OOF score
    (official :func:`lsdc.metric.score`) beats the best single model's by more than ``MIN_GAIN``, or the
    spec is that model alone (``fallback`` names it) and the two scores are exactly equal. With ``folds``
    (study_id -> fold) the spec also records :func:`nested_score`, the same fit judged out of fold.
    """
    aligned = align_oofs(oofs)
    models = list(aligned)
    first = next(iter(aligned.values()))
    solution = _solution_for(labels, first[ROW_ID].tolist())
    fitted = _fit(aligned, solution, temperature, min_weight)
    studies = {schema.parse_row_id(r)[0] for r in first[ROW_ID]}
    spec = EnsembleSpec(
        models=models, weights=fitted.weights, temperatures=fitted.temperatures,
        experiments={m: (experiments or {}).get(m, m) for m in models},
        kinds={m: (kinds or {}).get(m, UNKNOWN_KIND) for m in models},
        oof_scores=fitted.single, ensemble_score=fitted.score, fallback=fitted.fallback,
        fit={"objective": FIT_OBJECTIVE, "temperature_fitted": temperature, "min_weight": min_weight,
             "group_loss": fitted.group_loss, "best_single": fitted.best, "n_rows": len(first),
             "n_scored_rows": len(solution), "n_studies": len(studies)},
    )
    if folds:
        spec.nested_score = nested_score(aligned, solution, folds, temperature, min_weight)
        log.info("ensemble OOF score %.5f in sample, %.5f nested (weights fitted on the other folds)",
                 spec.ensemble_score[SCORE], spec.nested_score[SCORE])
    log.info("ensemble OOF score %.5f; best single model %s %.5f",
             spec.ensemble_score[SCORE], fitted.best, fitted.single[fitted.best][SCORE])
    return spec


# ----------------------------------------------------------------------------- saving and loading


def save_ensemble(spec: EnsembleSpec, path: str | os.PathLike) -> None:
    """Write the spec as JSON (atomically)."""
    write_json(path, spec.to_dict())


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_spec(spec: EnsembleSpec, source: str) -> None:
    """DataError naming ``source`` unless every group has weights over exactly the models and a temperature."""
    models = spec.models
    if not isinstance(models, list) or not models or len(set(models)) != len(models):
        raise DataError(f"{source}: 'models' must be a non-empty list of distinct names, got {models!r}")
    if not isinstance(spec.weights, dict) or not isinstance(spec.temperatures, dict):
        raise DataError(f"{source}: 'weights' and 'temperatures' must be mappings keyed by group {list(schema.GROUPS)}")
    for group in schema.GROUPS:
        w = spec.weights.get(group)
        if not isinstance(w, dict) or set(w) != set(models):
            raise DataError(f"{source}: weights of group {group!r} must name exactly the models {models}")
        values = list(w.values())
        if not (all(_is_number(v) and v >= 0 for v in values) and abs(sum(values) - 1.0) <= WEIGHT_TOL):
            raise DataError(f"{source}: weights of group {group!r} must be non-negative and sum to 1, got {w}")
        t = spec.temperatures.get(group)
        if not (_is_number(t) and t > 0):
            raise DataError(f"{source}: temperature of group {group!r} must be a positive number, got {t!r}")


def load_ensemble(path: str | os.PathLike) -> EnsembleSpec:
    """Read and check an ensemble.json written by :func:`save_ensemble`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ensemble spec {path} not found: run scripts/04_ensemble.py first")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the ensemble spec ({exc})") from exc
    names = {f.name for f in dataclasses.fields(EnsembleSpec)}
    if not isinstance(raw, dict) or not {"models", "weights", "temperatures"} <= set(raw):
        raise DataError(f"{path}: not an ensemble spec (needs 'models', 'weights', 'temperatures')")
    unknown = sorted(set(raw) - names)
    if unknown:
        raise DataError(f"{path}: unknown ensemble spec key(s) {unknown}")
    spec = EnsembleSpec(**raw)
    if spec.version != SPEC_VERSION:
        raise DataError(f"{path}: ensemble spec version {spec.version}, this code reads {SPEC_VERSION}")
    _check_spec(spec, str(path))
    return spec


# ----------------------------------------------------------------------------- comparison table


def _condition_label(condition: str) -> str:
    """Short column prefix of a condition: its group, with the side when it has one."""
    info = schema.CONDITION_INFO[condition]
    return f"{info.side}_{info.group}" if info.side else info.group


def _ovr_macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro AUC over the classes present; NaN with fewer than 2.

    With all classes present this is sklearn's ``roc_auc_score(multi_class='ovr')``; with two it is
    the mean of the same per-class binary AUCs (sklearn refuses a class absent from ``y``).
    """
    classes = np.unique(y)
    if len(classes) < 2:
        return float("nan")
    if len(classes) == probs.shape[1]:
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in classes]))


def _condition_metrics(solution: pd.DataFrame, df: pd.DataFrame) -> dict[str, float]:
    """Per condition: accuracy, macro-F1 (argmax vs label) and OVR macro AUC on the labeled rows."""
    ids = solution[ROW_ID].astype(str)
    probs = df.set_index(ROW_ID).loc[ids.to_numpy(), SEV].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    y = solution[SEV].to_numpy().argmax(axis=1)
    conditions = np.array([schema.parse_row_id(r)[1] for r in ids], dtype=object)
    out: dict[str, float] = {}
    for condition in schema.CONDITIONS:
        label = _condition_label(condition)
        mask = conditions == condition
        if not mask.any():
            out.update({f"{label}_{k}": float("nan") for k in METRICS})
            continue
        pred = probs[mask].argmax(axis=1)
        out[f"{label}_acc"] = float(accuracy_score(y[mask], pred))
        out[f"{label}_f1"] = float(f1_score(y[mask], pred, average="macro", zero_division=0))
        out[f"{label}_auc"] = _ovr_macro_auc(y[mask], probs[mask])
    return out


def comparison_table(
    oofs: Mapping[str, pd.DataFrame],
    labels: pd.DataFrame,
    *,
    ensemble: pd.DataFrame | None = None,
    kinds: Mapping[str, str] | None = None,
    nested: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per model (and the ensemble, if given), sorted by official score, on the shared OOF rows.

    Columns: model, kind, ensemble (bool), the official score and its four terms, then per condition
    ``<condition>_acc``, ``_f1``, ``_auc``. ``labels``: train.csv-shaped frame or scoring-format solution.
    ``nested``: the ensemble's nested score (:func:`nested_score`), listed as its own row.
    """
    aligned = align_oofs(oofs)
    first = next(iter(aligned.values()))
    solution = _solution_for(labels, first[ROW_ID].tolist())
    frames: list[tuple[str, str, bool, pd.DataFrame]] = [
        (m, (kinds or {}).get(m, UNKNOWN_KIND), False, _model_frame(df)) for m, df in aligned.items()
    ]
    if ensemble is not None:
        ens = ensemble.set_index(ROW_ID).reindex(first[ROW_ID])
        if ens[SEV].isna().any(axis=None):
            raise DataError("the ensemble's OOF predictions miss rows the experiments share")
        frames.append((ENSEMBLE, ENSEMBLE, True, ens.reset_index()))
    rows = []
    for name, kind, is_ens, df in frames:
        result = metric.score(solution, df)
        rows.append({"model": name, "kind": kind, ENSEMBLE: is_ens, **{k: result[k] for k in TERMS},
                     **_condition_metrics(solution, df)})
    if nested:
        rows.append({"model": NESTED, "kind": ENSEMBLE, ENSEMBLE: True, **{k: nested[k] for k in TERMS}})
    return pd.DataFrame(rows).sort_values(SCORE, kind="stable").reset_index(drop=True)


def _cell(value: Any, decimals: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"
    return str(value)


def table_markdown(table: pd.DataFrame) -> str:
    """The comparison table as markdown: scores to 4 decimals, other metrics to 3, the ensemble in bold."""
    columns = [c for c in table.columns if c != ENSEMBLE]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        cells = [_cell(row[c], 4 if c in TERMS else 3) for c in columns]
        if bool(row[ENSEMBLE]):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the whole step


def build_ensemble(
    output_dir: str | os.PathLike, train_labels: pd.DataFrame, cfg: EnsembleConfig | None = None,
) -> tuple[pd.DataFrame, EnsembleSpec]:
    """Discover experiments, fit the ensemble, write its table (see :func:`table_names`) and the spec
    (``cfg.spec_file``) into ``output_dir``. A spec made from the same OOF files, labels and settings is
    reused, not fitted again."""
    cfg = cfg or EnsembleConfig()
    cfg.check()
    output_dir = Path(output_dir)
    found = discover_experiments(output_dir, cfg.oof_file)
    if not found:
        hint = "scripts/02_train.py" if cfg.oof_file == OOF_CSV else "scripts/07_localized_oof.py"
        raise DataError(f"{output_dir}: no experiment folder holds an {cfg.oof_file}; run {hint} first")
    names = list(cfg.experiments) if cfg.experiments is not None else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ConfigError(f"experiment(s) {unknown} have no {cfg.oof_file} in {output_dir}; found: {list(found)}")
    table_csv, table_md = table_names(cfg.oof_file)
    spec_path = output_dir / cfg.spec_file
    inputs = {"version": SPEC_VERSION, "config": dataclasses.asdict(cfg),
              "oofs": {n: file_state(found[n]) for n in names},
              "configs": {n: file_state(found[n].parent / CONFIG_YAML) for n in names},
              "labels": digest(train_labels.to_csv(index=False))}
    if is_current(spec_path, inputs) and (output_dir / table_csv).is_file():
        log.info("%s is up to date (same OOF, labels and settings)", spec_path)
        return pd.read_csv(output_dir / table_csv), load_ensemble(spec_path)
    oofs = align_oofs({n: read_oof(found[n]) for n in names})
    kinds = {n: experiment_kind(found[n].parent) for n in names}
    folds = _shared_folds(output_dir, [found[n].parent for n in names])
    spec = fit_ensemble(oofs, train_labels, temperature=cfg.temperature, min_weight=cfg.min_weight,
                        kinds=kinds, experiments={n: found[n].parent.name for n in names}, folds=folds)
    table = comparison_table(oofs, train_labels, ensemble=apply_ensemble(spec, oofs), kinds=kinds,
                             nested=spec.nested_score)
    write_csv(table, output_dir / table_csv)
    write_text(output_dir / table_md, table_markdown(table))
    save_ensemble(spec, spec_path)
    write_stamp(spec_path, inputs)
    log.info("wrote %s, %s and %s in %s", table_csv, table_md, cfg.spec_file, output_dir)
    return table, spec


def _shared_folds(output_dir: Path, exp_dirs: list[Path]) -> dict[int, int] | None:
    """study_id -> fold of the folds file the experiments were trained on (for the nested score); None
    when they name different fold counts or the file is missing."""
    counts = set()
    for d in exp_dirs:
        try:
            counts.add(load_experiment_config(d).folds.n_folds)
        except DataError:
            return None
    path = output_dir / folds_csv(counts.pop()) if len(counts) == 1 else None
    if path is None or not path.is_file():
        log.info("no shared folds file for the experiments: the nested ensemble score is left out")
        return None
    folds = pd.read_csv(path)
    return dict(zip(folds.study_id.astype(int), folds.fold.astype(int)))


def table_names(oof_file: str) -> tuple[str, str]:
    """The comparison table's CSV and markdown names for an OOF file: oof_table.* for oof.csv,
    oof_localized_table.* for oof_localized.csv, so both tables can sit side by side."""
    if oof_file == OOF_CSV:
        return TABLE_CSV, TABLE_MD
    stem = Path(oof_file).stem
    return f"{stem}_table.csv", f"{stem}_table.md"
