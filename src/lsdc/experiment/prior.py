"""The training prior: the best constant prediction per metric group, and what fills rows no model predicted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.errors import DataError
from lsdc.experiment.files import PRIOR_JSON
from lsdc.io import write_json

PROB_FLOOR = 1e-7   # no submitted probability is lower: one confident mistake costs at most ~16 nats


def prior_probabilities(train: pd.DataFrame) -> dict[str, np.ndarray]:
    """The best constant prediction per metric group under the metric: class counts (+1 smoothing) times
    the severity weights 1/2/4, normalised. Minimising sum_k w_k n_k (-log p_k) over p gives
    p_k proportional to w_k n_k, not the plain frequency n_k (which is worse than uniform for subarticular
    on the real class mix)."""
    long = train.melt(id_vars="study_id", value_vars=list(schema.LABEL_COLUMNS), var_name="col", value_name="sev")
    long = long.dropna(subset=["sev"])
    out = {}
    for group in schema.GROUPS:
        sev = long[long.col.map(schema.group_of_column) == group].sev.map(schema.SEVERITY_INDEX)
        mass = (np.bincount(sev, minlength=3).astype(float) + 1.0) * np.asarray(schema.SEVERITY_WEIGHTS)
        out[group] = mass / mass.sum()
    return out


def fill_out_of_fold(row_ids: list[str], preds: pd.DataFrame | None, train: pd.DataFrame, folds: pd.DataFrame
                     ) -> pd.DataFrame:
    """:func:`fill_with_prior` for out-of-fold rows: each fold's rows without a prediction get the prior of
    the other folds' labels, never one that saw the held-out labels. ``folds``: study_id, fold; rows of
    studies without a fold get the prior of all labels."""
    fold_of = folds.set_index("study_id").fold
    study = pd.Series([int(r.split("_", 1)[0]) for r in row_ids])
    row_fold = study.map(fold_of).fillna(-1).astype(int).to_numpy()
    parts = []
    for fold in np.unique(row_fold):
        ids = [r for r, f in zip(row_ids, row_fold) if f == fold]
        held = set(fold_of.index[fold_of == fold]) if fold >= 0 else set()
        parts.append(fill_with_prior(ids, preds, prior_probabilities(train[~train.study_id.isin(held)])))
    out = pd.concat(parts).set_index("row_id").loc[row_ids].reset_index()
    return out


def save_prior(exp_dir: str | Path, prior: dict[str, np.ndarray]) -> None:
    write_json(Path(exp_dir) / PRIOR_JSON, {g: np.asarray(v).tolist() for g, v in prior.items()})


def load_prior(folders: list[Path]) -> dict[str, np.ndarray]:
    """The training prior saved beside the first of ``folders`` that has one."""
    for folder in folders:
        path = folder / PRIOR_JSON
        if path.is_file():
            return {g: np.asarray(v, float) for g, v in json.loads(path.read_text()).items()}
    raise DataError(f"no {PRIOR_JSON} in {', '.join(str(f) for f in folders)}: train the experiments first")


def fill_with_prior(row_ids: list[str], preds: pd.DataFrame | None, prior: dict[str, np.ndarray]) -> pd.DataFrame:
    """Submission-format frame of exactly ``row_ids``: each row's prediction from ``preds`` where it has one,
    its group's prior elsewhere; floored at PROB_FLOOR and normalised per row."""
    cols = list(schema.SEVERITY_COLUMNS)
    vals = preds.set_index("row_id")[cols] if preds is not None and len(preds) else pd.DataFrame(columns=cols)
    arr = vals.reindex(row_ids).to_numpy(dtype=float, copy=True)
    fallback = np.array([prior[schema.group_of_column(r.split("_", 1)[1])] for r in row_ids]).reshape(-1, 3)
    missing = ~np.isfinite(arr).all(1)
    arr[missing] = fallback[missing]
    arr = np.clip(arr, PROB_FLOOR, None)
    arr /= arr.sum(1, keepdims=True)
    out = pd.DataFrame({"row_id": row_ids})
    for j, c in enumerate(cols):
        out[c] = arr[:, j]
    return out
