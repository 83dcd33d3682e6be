"""Out-of-fold frames lined up for comparison and fitting: every experiment's ``oof.csv`` is in submission
format over the same CV folds, so their rows can be matched by row id and scored with the one metric."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lsdc import metric, schema
from lsdc.errors import DataError

log = logging.getLogger(__name__)

ROW_ID = metric.ROW_ID
SEV: list[str] = list(schema.SEVERITY_COLUMNS)


def read_oof(path: str | os.PathLike) -> pd.DataFrame:
    """An experiment's oof.csv, validated as a submission (errors name the file)."""
    return metric.read_submission(path)


def normalise(values: np.ndarray) -> np.ndarray:
    """Rows divided by their sum: the one normalisation both single-model scoring and the blend use,
    so a model blended alone gives bit-identical rows and hence exactly its own score."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    return values / values.sum(axis=1, keepdims=True)


def model_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A model's frame as the blend sees it: row_id + normalised probabilities."""
    out = pd.DataFrame({ROW_ID: df[ROW_ID].astype(str).to_numpy()})
    out[SEV] = normalise(df[SEV].to_numpy(dtype=np.float64))
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


def solution_for(labels: pd.DataFrame, row_ids: Sequence[str]) -> pd.DataFrame:
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


def row_groups(row_ids: Sequence[str]) -> np.ndarray:
    """Metric group of each row id (valid ids assumed)."""
    return np.array([schema.CONDITION_INFO[schema.parse_row_id(r)[1]].group for r in row_ids], dtype=object)


def row_folds(row_ids: Sequence[str], folds: Mapping[int, int]) -> np.ndarray:
    """Fold of each row's study (-1 when the study has none); ``folds``: study_id -> fold."""
    return np.array([folds.get(schema.parse_row_id(r)[0], -1) for r in row_ids], dtype=np.int64)
