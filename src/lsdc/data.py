"""The competition folder's tables and layout, each read in one place with one set of checks.

train.csv, train_label_coordinates.csv, {train,test}_series_descriptions.csv and sample_submission.csv
are read here and nowhere else; every error names the file and the study or value at fault. Also the
folder layout (``train_images/<study>/<series>/<instance>.dcm``) and reading a study's series.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.dicom import Series, load_series
from lsdc.errors import DataError
from lsdc.io import read_csv_checked

log = logging.getLogger(__name__)

Split = Literal["train", "test"]
DATA_HINT = "is --data-dir the competition folder?"


def images_dir(data_dir: str | Path, split: Split) -> Path:
    """train_images/ or test_images/ of the competition folder."""
    return Path(data_dir) / (schema.TRAIN_IMAGES if split == "train" else schema.TEST_IMAGES)


def load_train_labels(data_dir: str | Path) -> pd.DataFrame:
    """train.csv with its 25 label columns checked (empty cells stay NaN)."""
    path = Path(data_dir) / schema.TRAIN_CSV
    df = read_csv_checked(path, schema.TRAIN_COLUMNS, DATA_HINT, keep_default_na=False, na_values=[""])
    labels = df[list(schema.LABEL_COLUMNS)]
    bad = ~labels.isin(schema.SEVERITIES) & labels.notna()
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise DataError(f"{path}: study {df.study_id.iloc[r]} has unknown label "
                        f"{df.iloc[r][schema.LABEL_COLUMNS[c]]!r} in {schema.LABEL_COLUMNS[c]}")
    if df.study_id.duplicated().any():
        raise DataError(f"{path} repeats study {df.study_id[df.study_id.duplicated()].iloc[0]}")
    return df


def load_series_descriptions(data_dir: str | Path, split: Split) -> pd.DataFrame:
    """{train,test}_series_descriptions.csv: study_id, series_id, series_description (one of the three)."""
    name = schema.TRAIN_SERIES_CSV if split == "train" else schema.TEST_SERIES_CSV
    path = Path(data_dir) / name
    df = read_csv_checked(path, schema.SERIES_COLUMNS, DATA_HINT)
    unknown = sorted(set(df.series_description) - set(schema.SERIES_DESCRIPTIONS))
    if unknown:
        row = df[df.series_description == unknown[0]].iloc[0]
        raise DataError(f"{path}: study {row.study_id} series {row.series_id} has unknown description "
                        f"{unknown[0]!r} (expected one of {list(schema.SERIES_DESCRIPTIONS)})")
    return df


def load_coordinates(data_dir: str | Path) -> pd.DataFrame:
    """train_label_coordinates.csv, one point per (study, condition, level): the first row of a cell
    (the real file repeats a few), with its conditions and levels checked."""
    path = Path(data_dir) / schema.COORDS_CSV
    coords = read_csv_checked(path, schema.COORD_COLUMNS, DATA_HINT)
    for column, known in (("condition", schema.CONDITIONS), ("level", schema.LEVELS)):
        unknown = sorted(set(coords[column]) - set(known))
        if unknown:
            study = coords[coords[column] == unknown[0]].study_id.iloc[0]
            raise DataError(f"{path}: study {study} has unknown {column} {unknown[0]!r}")
    cells = ["study_id", "condition", "level"]
    repeated = int(coords.duplicated(subset=cells).sum())
    if repeated:
        log.info("%s: %d repeated (study, condition, level) rows; the first of each is used", path.name, repeated)
    return coords.drop_duplicates(subset=cells, keep="first").reset_index(drop=True)


def submission_row_ids(data_dir: str | Path) -> list[str]:
    """sample_submission.csv's rows in its order; 25 per test study when that file is absent."""
    path = Path(data_dir) / schema.SAMPLE_SUBMISSION_CSV
    if path.is_file():
        rows = read_csv_checked(path, ("row_id",), DATA_HINT, usecols=["row_id"]).row_id.tolist()
        for rid in rows:
            try:
                schema.parse_row_id(rid)
            except ValueError:
                raise DataError(f"{path}: malformed row_id {rid!r}") from None
        return rows
    studies = sorted(load_series_descriptions(data_dir, "test").study_id.unique())
    return [r for s in studies for r in schema.study_row_ids(int(s))]


def load_study_series(study_dir: Path, series: pd.DataFrame, failures: dict[str, list[str]] | None = None
                      ) -> dict[str, list[Series]]:
    """A study's readable series by description, from its rows of the series table; a series that is
    missing or unreadable is logged with the study and left out, and its reason added to ``failures``
    (description -> messages) when given, so a caller can tell "unreadable" from "never listed"."""
    out: dict[str, list[Series]] = {}
    for r in series.itertuples(index=False):
        try:
            s = load_series(study_dir / str(r.series_id), study_id=int(r.study_id), series_id=int(r.series_id),
                            description=r.series_description)
        except DataError as exc:
            log.warning("study %s: series %s (%s) unusable: %s", r.study_id, r.series_id, r.series_description, exc)
            if failures is not None:
                failures.setdefault(r.series_description, []).append(str(exc))
            continue
        out.setdefault(r.series_description, []).append(s)
    return out
