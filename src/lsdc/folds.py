"""Cross-validation folds: grouped by study, stratified on severity, saved once for every model.

Every model reads the same ``folds.csv``, so out-of-fold predictions of different models cover the same
studies with the same held-out splits and can be compared and ensembled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lsdc import schema
from lsdc.data import load_train_labels
from lsdc.errors import DataError
from lsdc.io import write_csv


def folds_csv(n_folds: int) -> str:
    """One file per fold count, so a 2-fold smoke run never reshuffles a 5-fold experiment."""
    return f"folds_{n_folds}.csv"


def make_folds(train: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """study_id -> fold, no study in two folds, severity spread evenly across folds.

    Stratifies the (study, condition, level) cells on condition group x severity, grouped by study.
    """
    if train.study_id.duplicated().any():
        raise DataError(f"train.csv repeats study {train.study_id[train.study_id.duplicated()].iloc[0]}")
    if len(train) < n_folds:
        raise DataError(f"{len(train)} studies cannot make {n_folds} folds")
    long = train.melt(id_vars="study_id", value_vars=list(schema.LABEL_COLUMNS), var_name="col", value_name="sev")
    long = long.dropna(subset=["sev"])
    strata = long.col.map(schema.group_of_column) + "/" + long.sev
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = pd.Series(-1, index=train.study_id.to_numpy())
    for k, (_, held) in enumerate(splitter.split(long, strata, groups=long.study_id)):
        fold[long.study_id.iloc[held].unique()] = k
    # Studies with no label at all still get a fold (round robin).
    unassigned = fold.index[fold < 0]
    fold[unassigned] = np.arange(len(unassigned)) % n_folds
    return pd.DataFrame({"study_id": fold.index.astype(int), "fold": fold.to_numpy().astype(int)})


def prepare_folds(data_dir: str | Path, output_dir: str | Path, n_folds: int = 5, seed: int = 42) -> Path:
    """Write ``output_dir/folds.csv`` unless it exists for the same studies and fold count."""
    out = Path(output_dir) / folds_csv(n_folds)
    train = load_train_labels(data_dir)
    if out.is_file():
        old = pd.read_csv(out)
        if set(old.study_id) == set(train.study_id):
            return out
    write_csv(make_folds(train, n_folds, seed), out)
    return out


def load_folds(output_dir: str | Path, n_folds: int) -> pd.DataFrame:
    """study_id -> fold of ``output_dir/folds_<n_folds>.csv``."""
    path = Path(output_dir) / folds_csv(n_folds)
    if not path.is_file():
        raise DataError(f"{path} not found: run scripts/01_prepare_crops.py first")
    return pd.read_csv(path)
