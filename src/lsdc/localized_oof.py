"""Out-of-fold scores from localised points instead of annotated ones: what the test rows will see.

The localiser's held-out requests (``oof_points.csv``: each training study placed by the fold model that
did not see it) are cropped like test studies and classified by each experiment's model of the same
fold, then blended by the ensemble. Needs the localiser and the experiments on the same folds.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from lsdc import schema
from lsdc.crops import CropRequest
from lsdc.data import images_dir, load_train_labels
from lsdc.ensemble import apply_ensemble
from lsdc.errors import DataError
from lsdc.experiment import LOCALIZED_OOF_CSV, OOF_CSV, fill_with_prior, load_prior, resolve_device
from lsdc.folds import load_folds
from lsdc.inference import (
    PredictConfig,
    classify,
    crops_per_model,
    experiment_folders,
    load_ensemble_models,
    localizer_folder,
    prediction_rows,
    weights_state,
)
from lsdc.io import read_csv_checked, write_csv
from lsdc.localize import OOF_POINTS_CSV
from lsdc.metric import score, solution_from_labels
from lsdc.progress import progress
from lsdc.stamps import file_state, is_current, tree_state, write_stamp

log = logging.getLogger(__name__)

SCORES_CSV = "localized_oof_scores.csv"
POINT_COLUMNS = ("study_id", "condition", "level", "series_id", "instance_number", "x", "y", "fold")


def localized_oof(data_dir: str | Path, weights_dir: str | Path, cfg: PredictConfig,
                  out_path: str | Path | None = None, show_progress: bool = True) -> pd.DataFrame:
    """Per model (and the ensemble) the official score and its parts from localised points, next to
    the same from annotated points (``oof.csv``), on the same studies.

    Rows the localiser placed no crop for get the training prior, as at test time. Each experiment's
    localised OOF is written to ``<experiment>/oof_localized.csv`` (04_ensemble.py can fit on it with
    ``--set oof_file=oof_localized.csv``); with ``out_path``, the ensemble's rows and the score table
    (``localized_oof_scores.csv`` beside it) too.
    """
    data_dir, weights_dir = Path(data_dir), Path(weights_dir)
    loc_dir = localizer_folder(weights_dir, cfg.localizer)
    inputs = {"config": dataclasses.asdict(cfg), "weights": weights_state(weights_dir, loc_dir, cfg),
              "points": file_state(loc_dir / OOF_POINTS_CSV), "labels": file_state(data_dir / schema.TRAIN_CSV),
              "images": tree_state(images_dir(data_dir, "train"))}
    scores_path = None if out_path is None else Path(out_path).with_name(SCORES_CSV)
    if out_path is not None and is_current(out_path, inputs) and scores_path.is_file():
        log.info("%s is up to date (same localiser, models and settings)", out_path)
        return pd.read_csv(scores_path)
    device = resolve_device(cfg.device)
    points = read_csv_checked(loc_dir / OOF_POINTS_CSV, POINT_COLUMNS, "retrain the localiser with this version")
    spec, models = load_ensemble_models(weights_dir, cfg, device)
    folders = dict(zip(models, experiment_folders(weights_dir, models)))
    fold_of = points.drop_duplicates("study_id").set_index("study_id").fold
    for name, m in models.items():
        split = load_folds(weights_dir, m.cfg.folds.n_folds).set_index("study_id").fold.reindex(fold_of.index)
        if split.isna().any() or not (split.to_numpy() == fold_of.to_numpy()).all():
            raise DataError(f"{name} was trained on other folds than the localiser ({m.cfg.folds.n_folds} folds); "
                            "localised OOF needs both on the same folds_<k>.csv")
    prior = load_prior(list(folders.values()))
    requests_of: dict[int, list[CropRequest]] = {}
    for r in points.dropna(subset=["series_id"]).itertuples(index=False):
        requests_of.setdefault(int(r.study_id), []).append(
            CropRequest(r.condition, r.level, int(r.series_id), int(r.instance_number), float(r.x), float(r.y)))
    per_model: dict[str, list[dict[str, Any]]] = {n: [] for n in models}
    studies = fold_of.index.tolist()
    for sid in progress(studies, "localised oof", enabled=show_progress):
        fold = int(fold_of[sid])
        study_dir = images_dir(data_dir, "train") / str(sid)
        crops = crops_per_model(study_dir, requests_of.get(int(sid), []), models, None)
        for name, m in models.items():
            held_out = m.only_fold(fold)
            if held_out is not None:
                per_model[name] += prediction_rows(int(sid), classify(held_out, crops[name], device, cfg.tta,
                                                                      cfg.batch_size))
    row_ids = [r for sid in studies for r in schema.study_row_ids(int(sid))]
    frames = {n: pd.DataFrame(rows, columns=list(schema.SUBMISSION_COLUMNS)) for n, rows in per_model.items()}
    labels = load_train_labels(data_dir)
    solution = solution_from_labels(labels[labels.study_id.isin(studies)])
    subs = {n: fill_with_prior(row_ids, f, prior) for n, f in frames.items()}
    for n, sub in subs.items():
        write_csv(sub, folders[n] / LOCALIZED_OOF_CSV)
    covered = {n: f for n, f in frames.items() if len(f)}
    subs["ensemble"] = fill_with_prior(row_ids, apply_ensemble(spec, covered) if covered else None, prior)
    annotated = {n: read_csv_checked(folders[n] / OOF_CSV, schema.SUBMISSION_COLUMNS) for n in models}
    annotated["ensemble"] = apply_ensemble(spec, annotated)
    rows = []
    for n, sub in subs.items():
        loc = score(solution, sub)
        ann = score(solution, fill_with_prior(row_ids, annotated[n], prior))
        rows.append({"model": n, **{f"localised_{k}": v for k, v in loc.items()},
                     **{f"annotated_{k}": v for k, v in ann.items()}})
    table = pd.DataFrame(rows)
    if out_path is not None:
        write_csv(subs["ensemble"], out_path)
        write_csv(table, scores_path)
        write_stamp(out_path, inputs)
    return table
