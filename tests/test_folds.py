import numpy as np
import pandas as pd
import pytest

from lsdc import schema
from lsdc.errors import DataError
from lsdc.folds import make_folds


def fake_train(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(schema.SEVERITIES), p=[0.8, 0.13, 0.07], size=(n, 25)).astype(object)
    labels[rng.random((n, 25)) < 0.01] = np.nan
    df = pd.DataFrame(labels, columns=list(schema.LABEL_COLUMNS))
    df.insert(0, "study_id", rng.choice(10**8, size=n, replace=False))
    return df


def test_grouped_and_stratified():
    train = fake_train(200)
    folds = make_folds(train, n_folds=5, seed=1)
    assert len(folds) == 200 and folds.study_id.is_unique          # every study once, one fold
    assert set(folds.fold) == set(range(5))
    assert folds.fold.value_counts().between(35, 45).all()
    long = train.melt(id_vars="study_id", value_vars=list(schema.LABEL_COLUMNS)).merge(folds, on="study_id")
    severe_share = long.assign(sev=long.value == "Severe").groupby("fold").sev.mean()
    assert severe_share.max() - severe_share.min() < 0.03               # stratified on severity
    assert make_folds(train, 5, 1).equals(folds)                        # deterministic


def test_too_few_studies():
    with pytest.raises(DataError, match="cannot make 5 folds"):
        make_folds(fake_train(3), 5)
