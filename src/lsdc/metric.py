"""The official competition metric, implemented once, in numpy.

Every score this project reports (CV, the scoring script, benchmarks) comes from :func:`score`, so a
local number means the same thing as the Kaggle leaderboard. It deliberately avoids sklearn: sklearn
versions differ in how ``log_loss`` clips and whether it renormalises rows, which would silently move
the score.

Definition (the competition's Evaluation page and official metric notebook): per group,
``sum_i w_i * -ln p_i[y_i] / sum_i w_i`` with weights 1/2/4 for Normal/Mild, Moderate, Severe; plus
``any_severe_spinal``, a weighted binary log loss per study over its scored spinal rows; the score is
their weighted mean (weights 1, 1, 1 and ``any_severe_scalar``). Submission rows are normalised to sum
to 1, then clipped to ``[EPS, 1 - EPS]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.errors import DataError

ROW_ID: str = schema.SUBMISSION_COLUMNS[0]
STUDY_ID: str = schema.TRAIN_COLUMNS[0]
SAMPLE_WEIGHT = "sample_weight"
SOLUTION_COLUMNS: tuple[str, ...] = (ROW_ID, *schema.SEVERITY_COLUMNS, SAMPLE_WEIGHT)
SEVERE_COLUMN: str = schema.SEVERITY_COLUMNS[-1]  # the most severe class, the any-severe target

# Result keys, in the order they are reported.
GROUP_KEYS: tuple[str, ...] = schema.GROUPS
# The central canal is the one condition without a side; any_severe is derived from its group.
SPINAL_GROUP: str = next(info.group for info in schema.CONDITION_INFO.values() if info.side is None)
ANY_SEVERE_KEY = f"any_severe_{SPINAL_GROUP}"
SCORE_KEY = "score"
TERM_KEYS: tuple[str, ...] = (*GROUP_KEYS, ANY_SEVERE_KEY)   # the four averaged terms
RESULT_KEYS: tuple[str, ...] = (*TERM_KEYS, SCORE_KEY)

# sklearn's log_loss (the official metric calls it with its default) clips to the machine epsilon of
# the prediction dtype: eps="auto" in sklearn 1.2-1.4, the only behaviour from 1.5 on. Float64 here.
EPS: float = float(np.finfo(np.float64).eps)

_SHOWN = 5  # how many offending ids an error message lists
_EXAMPLE_ROW_ID: str = schema.row_id(44036939, schema.CONDITIONS[1], schema.LEVELS[0])


def _preview(items: Iterable[object]) -> str:
    """A few items for an error message, with a count of the rest."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:_SHOWN])
    return shown if len(items) <= _SHOWN else f"{shown} (+{len(items) - _SHOWN} more)"


def _parse_row_ids(row_ids: pd.Series, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(study ids, metric groups) of each row id; DataError listing the malformed ones."""
    studies = np.empty(len(row_ids), dtype=np.int64)
    groups = np.empty(len(row_ids), dtype=object)
    bad: list[str] = []
    for i, rid in enumerate(row_ids):
        try:
            if not isinstance(rid, str):
                raise ValueError(rid)
            study, condition, _ = schema.parse_row_id(rid)
        except ValueError:
            bad.append(repr(rid))
            continue
        studies[i] = study
        groups[i] = schema.CONDITION_INFO[condition].group
    if bad:
        raise DataError(
            f"{source}: {len(bad)} malformed {ROW_ID}(s): {_preview(bad)}; "
            f"expected '{{study_id}}_{{condition}}_{{level}}' such as {_EXAMPLE_ROW_ID!r}"
        )
    return studies, groups


def _check_duplicates(row_ids: pd.Series, source: str) -> None:
    dup = row_ids[row_ids.duplicated()].unique()
    if len(dup):
        raise DataError(f"{source}: {len(dup)} duplicate {ROW_ID}(s): {_preview(dup)}")


def _numeric_block(df: pd.DataFrame, columns: Iterable[str], source: str) -> np.ndarray:
    """The columns as float64; DataError naming the row id and column of a non-numeric cell."""
    out = []
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            rows = df.loc[bad, ROW_ID].tolist() if ROW_ID in df.columns else df.index[bad].tolist()
            raise DataError(f"{source}: column {col!r} is not numeric at {ROW_ID} {_preview(rows)}")
        out.append(values.to_numpy(dtype=np.float64, na_value=np.nan))
    return np.column_stack(out)


def _require_columns(df: pd.DataFrame, columns: Iterable[str], source: str, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing {what} column(s) {missing}; got {list(df.columns)}")


def solution_from_labels(train_df: pd.DataFrame, source: str = "train labels") -> pd.DataFrame:
    """The scoring-format solution of a train.csv-shaped frame; empty cells give no row (unscored).

    Rows come study by study in train.csv column order.
    """
    _require_columns(train_df, schema.TRAIN_COLUMNS, source, "train.csv")
    raw_ids = train_df[STUDY_ID]
    numeric_ids = pd.to_numeric(raw_ids, errors="coerce")
    bad = numeric_ids.isna() | (numeric_ids != np.floor(numeric_ids)) | (numeric_ids < 0)
    if bad.any():
        raise DataError(f"{source}: {STUDY_ID} is not a non-negative integer: {_preview(raw_ids[bad])}")
    study_ids = numeric_ids.astype(np.int64).to_numpy()
    dup = pd.Series(study_ids).duplicated()
    if dup.any():
        raise DataError(f"{source}: duplicate {STUDY_ID}(s): {_preview(np.unique(study_ids[dup]))}")

    labels = train_df[list(schema.LABEL_COLUMNS)].to_numpy(dtype=object)
    row_ids: list[str] = []
    classes: list[int] = []
    unknown: list[str] = []
    for study, row in zip(study_ids, labels, strict=True):
        for col, value in zip(schema.LABEL_COLUMNS, row, strict=True):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if isinstance(value, str) and not value.strip():
                continue
            if value not in schema.SEVERITY_INDEX:
                unknown.append(f"study {study} column {col}: {value!r}")
                continue
            row_ids.append(f"{study}_{col}")
            classes.append(schema.SEVERITY_INDEX[value])
    if unknown:
        raise DataError(
            f"{source}: {len(unknown)} unknown label value(s) ({_preview(unknown)}); "
            f"expected one of {list(schema.SEVERITIES)} or an empty cell"
        )
    cls = np.asarray(classes, dtype=np.int64)
    onehot = np.eye(len(schema.SEVERITIES))[cls] if len(cls) else np.zeros((0, len(schema.SEVERITIES)))
    out = pd.DataFrame({ROW_ID: row_ids})
    for k, col in enumerate(schema.SEVERITY_COLUMNS):
        out[col] = onehot[:, k]
    out[SAMPLE_WEIGHT] = np.asarray(schema.SEVERITY_WEIGHTS, dtype=np.float64)[cls]
    return out


def _check_solution(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """A clean copy of a scoring-format solution: unique row ids, one-hot labels, positive weights."""
    if df.empty:
        raise DataError(f"{source}: the solution has no scored rows")
    out = df[list(SOLUTION_COLUMNS)].reset_index(drop=True).copy()
    _parse_row_ids(out[ROW_ID], source)
    out[ROW_ID] = out[ROW_ID].astype(str)
    _check_duplicates(out[ROW_ID], source)
    onehot = _numeric_block(out, schema.SEVERITY_COLUMNS, source)
    not_onehot = ~(np.isin(onehot, (0.0, 1.0)).all(axis=1) & (onehot.sum(axis=1) == 1.0))
    if not_onehot.any():
        raise DataError(
            f"{source}: label columns {list(schema.SEVERITY_COLUMNS)} are not one-hot at {ROW_ID} "
            f"{_preview(out.loc[not_onehot, ROW_ID])}"
        )
    weights = _numeric_block(out, [SAMPLE_WEIGHT], source)[:, 0]
    bad_w = ~(np.isfinite(weights) & (weights > 0))
    if bad_w.any():
        raise DataError(
            f"{source}: {SAMPLE_WEIGHT} must be finite and positive; bad at {ROW_ID} "
            f"{_preview(out.loc[bad_w, ROW_ID])}"
        )
    for k, col in enumerate(schema.SEVERITY_COLUMNS):
        out[col] = onehot[:, k]
    out[SAMPLE_WEIGHT] = weights
    return out


def _as_solution(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Scoring format from either accepted shape; DataError saying what was expected otherwise."""
    if set(SOLUTION_COLUMNS) <= set(df.columns):
        return _check_solution(df, source)
    if set(schema.TRAIN_COLUMNS) <= set(df.columns):
        return solution_from_labels(df, source)
    raise DataError(
        f"{source}: not a solution file; expected either the scoring format (columns "
        f"{list(SOLUTION_COLUMNS)}) or a train.csv-shaped file ({STUDY_ID!r} plus the "
        f"{len(schema.LABEL_COLUMNS)} label columns such as {schema.LABEL_COLUMNS[0]!r}); "
        f"got columns {list(df.columns)[:10]}"
    )


def _read_csv(path: str | os.PathLike, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        return pd.read_csv(path, dtype={ROW_ID: str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} CSV: {exc}") from exc


def load_solution(path: str | os.PathLike) -> pd.DataFrame:
    """Read a solution in the scoring format or train.csv shape; return the scoring format."""
    return _as_solution(_read_csv(path, "solution"), str(path))


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a submission CSV (messages name the file)."""
    df = _read_csv(path, "submission")
    validate_submission(df, source=str(path))
    return df


def validate_submission(
    sub_df: pd.DataFrame,
    required_row_ids: Iterable[str] | None = None,
    source: str = "submission",
) -> None:
    """Refuse a submission Kaggle would refuse or that cannot be scored, naming the offending rows.

    With ``required_row_ids`` the submission must hold exactly those rows (in any order).
    """
    cols = list(sub_df.columns)
    missing = [c for c in schema.SUBMISSION_COLUMNS if c not in cols]
    extra = [c for c in cols if c not in schema.SUBMISSION_COLUMNS]
    if missing or extra or len(cols) != len(schema.SUBMISSION_COLUMNS):
        raise DataError(
            f"{source}: expected columns {list(schema.SUBMISSION_COLUMNS)}; "
            f"missing {missing}, unexpected {extra}" + ("" if missing or extra else f", got {cols}")
        )
    if sub_df.empty:
        raise DataError(f"{source}: the submission has no rows")
    row_ids = sub_df[ROW_ID]
    _parse_row_ids(row_ids, source)
    _check_duplicates(row_ids, source)

    probs = _numeric_block(sub_df, schema.SEVERITY_COLUMNS, source)
    for check, what in (
        (~np.isfinite(probs).all(axis=1), "NaN or infinite values"),
        ((probs < 0).any(axis=1), "negative values"),
        (probs.sum(axis=1) <= 0, "rows whose probabilities sum to 0"),
    ):
        if check.any():
            raise DataError(f"{source}: {what} at {ROW_ID} {_preview(row_ids[check])}")

    if required_row_ids is not None:
        required = list(dict.fromkeys(required_row_ids))
        have = set(row_ids)
        absent = [r for r in required if r not in have]
        if absent:
            raise DataError(f"{source}: {len(absent)} required row(s) missing: {_preview(absent)}")
        wanted = set(required)
        surplus = [r for r in row_ids if r not in wanted]
        if surplus:
            raise DataError(f"{source}: {len(surplus)} unexpected row(s): {_preview(surplus)}")


def _nll(onehot: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """-ln p_i[y_i] per row, with probabilities clipped as sklearn clips them."""
    return -(onehot * np.log(np.clip(probs, EPS, 1.0 - EPS))).sum(axis=1)


def weighted_nll(onehot: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> float:
    """sum_i w_i * -ln p_i[y_i] / sum_i w_i, with probabilities clipped as sklearn does."""
    return float((weights * _nll(onehot, probs)).sum() / weights.sum())


@dataclass(frozen=True)
class StudyTerms:
    """Each study's share of the score: per term (:data:`TERM_KEYS`), the sum of its rows' weighted losses
    and of their weights. A term is ``sum(loss) / sum(weight)`` over studies, so any resample of studies is
    scored from these sums alone (:func:`scores_from_sums`; :mod:`lsdc.bootstrap`)."""

    study_ids: np.ndarray   # (S,) sorted
    loss: np.ndarray        # (S, 4) sum_i w_i * -ln p_i[y_i] over the study's rows of each term
    weight: np.ndarray      # (S, 4) sum_i w_i over the same rows


def study_terms(solution: pd.DataFrame, submission: pd.DataFrame) -> StudyTerms:
    """The metric's terms of every study, from a solution (scoring format or train.csv-shaped) and a
    submission covering its rows (other rows ignored); rows normalised to sum to 1, then clipped as sklearn
    clips. ``any_severe_spinal`` is one binary row per study with scored spinal rows: label and prediction
    are the maxima of its rows' severe label and probability, weighted by the largest row weight."""
    sol = _as_solution(solution, "solution")
    validate_submission(submission)
    sol_ids = sol[ROW_ID]
    studies, groups = _parse_row_ids(sol_ids, "solution")
    sub = submission.set_index(ROW_ID)
    absent = sol_ids[~sol_ids.isin(sub.index)]
    if len(absent):
        raise DataError(
            f"submission: {len(absent)} of the {len(sol_ids)} solution rows are missing: {_preview(absent)}"
        )
    sub = sub.loc[sol_ids.to_numpy()].reset_index()
    probs = _numeric_block(sub, schema.SEVERITY_COLUMNS, "submission")
    probs = probs / probs.sum(axis=1, keepdims=True)
    onehot = sol[list(schema.SEVERITY_COLUMNS)].to_numpy(dtype=np.float64)
    weights = sol[SAMPLE_WEIGHT].to_numpy(dtype=np.float64)

    study_ids, study_of = np.unique(studies, return_inverse=True)
    n = len(study_ids)
    loss = np.zeros((n, len(TERM_KEYS)))
    weight = np.zeros((n, len(TERM_KEYS)))
    row_loss = weights * _nll(onehot, probs)
    for k, group in enumerate(GROUP_KEYS):
        mask = groups == group
        loss[:, k] = np.bincount(study_of[mask], row_loss[mask], minlength=n)
        weight[:, k] = np.bincount(study_of[mask], weights[mask], minlength=n)

    severe = schema.SEVERITY_COLUMNS.index(SEVERE_COLUMN)
    spinal = np.flatnonzero(groups == SPINAL_GROUP)
    has = np.zeros(n, dtype=bool)
    has[study_of[spinal]] = True
    label, pred, w = (np.zeros(n) for _ in range(3))
    np.maximum.at(label, study_of[spinal], onehot[spinal, severe])
    np.maximum.at(pred, study_of[spinal], probs[spinal, severe])
    np.maximum.at(w, study_of[spinal], weights[spinal])
    binary = _nll(np.column_stack([1.0 - label, label]), np.column_stack([1.0 - pred, pred]))
    k = len(GROUP_KEYS)
    loss[:, k] = np.where(has, w * binary, 0.0)
    weight[:, k] = np.where(has, w, 0.0)
    return StudyTerms(study_ids, loss, weight)


def scores_from_sums(loss: np.ndarray, weight: np.ndarray, any_severe_scalar: float = 1.0) -> np.ndarray:
    """The terms and the score from summed study terms: ``(..., 4)`` loss and weight sums -> ``(..., 5)``
    values in :data:`RESULT_KEYS` order (NaN for a term without weight)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(weight > 0, loss / np.where(weight > 0, weight, 1.0), np.nan)
    k = len(GROUP_KEYS)
    total = terms[..., :k].sum(axis=-1) + any_severe_scalar * terms[..., k]
    return np.concatenate([terms, (total / (k + any_severe_scalar))[..., None]], axis=-1)


def score(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    any_severe_scalar: float = 1.0,
) -> dict[str, float]:
    """The official metric and its parts, keyed by :data:`RESULT_KEYS`.

    ``solution`` may be in the scoring format or train.csv-shaped. The submission must cover every
    solution row; its other rows (unlabeled cells, other studies) are ignored. Per group
    ``sum_i w_i * -ln p_i[y_i] / sum_i w_i``, plus ``any_severe_spinal`` (:func:`study_terms`); the score is
    their weighted mean (weights 1, 1, 1 and ``any_severe_scalar``).
    """
    if not (math.isfinite(any_severe_scalar) and any_severe_scalar >= 0):
        raise ValueError(f"any_severe_scalar must be finite and >= 0, got {any_severe_scalar}")
    terms = study_terms(solution, submission)
    weight = terms.weight.sum(axis=0)
    for k, group in enumerate(GROUP_KEYS):
        if weight[k] <= 0:
            raise DataError(f"solution: no scored {group} rows, so the {group} loss is undefined")
    values = scores_from_sums(terms.loss.sum(axis=0), weight, any_severe_scalar)
    return {key: float(v) for key, v in zip(RESULT_KEYS, values)}
