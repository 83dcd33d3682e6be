"""Out-of-fold scores from localised points instead of annotated ones: what the test rows will see.

The localiser's held-out requests (``oof_points.csv``: each training study placed by the fold model that
did not see it) are cropped like test studies and classified by each experiment's model of the same
fold, with the test-time views prediction uses (``tta``, :mod:`lsdc.tta`). Needs the localiser and the
experiments on the same folds. Cells without a crop get the prior of the other folds' labels; a named experiment
with a fold untrained, or a model giving NaN, is an error (the OOF would quietly hold prior rows).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from lsdc import bootstrap, schema
from lsdc.crops import CropRequest
from lsdc.data import images_dir, load_train_labels
from lsdc.errors import DataError
from lsdc.experiment import (
    BEST_PT,
    LOCALIZED_OOF_CSV,
    OOF_CSV,
    fill_out_of_fold,
    load_experiment_config,
    load_experiment_models,
    resolve_device,
)
from lsdc.folds import load_folds
from lsdc.inference import (
    FoldRows,
    PredictConfig,
    add_fold_rows,
    check_trained,
    classify,
    crops_per_model,
    localizer_folder,
    trained_experiments,
    untrained_folds,
    untrained_message,
)
from lsdc.io import read_csv_checked, write_csv
from lsdc.localize import OOF_POINTS_CSV
from lsdc.metric import solution_from_labels
from lsdc.progress import progress
from lsdc.stamps import file_state, is_current, tree_state, write_stamp
from lsdc.tta import stamp_value

log = logging.getLogger(__name__)

SCORES_CSV = "localized_oof_scores.csv"
MADE_FROM = ("localizer", "experiments", "tta")   # the prediction settings a localised OOF depends on
POINT_COLUMNS = ("study_id", "condition", "level", "series_id", "instance_number", "x", "y", "fold")


def experiment_state(folder: Path) -> list[dict[str, Any]]:
    """What an experiment's localised OOF is made from: its fold checkpoints and its annotated OOF."""
    return [file_state(f) for f in sorted(folder.glob(f"fold*/{BEST_PT}"))] + [file_state(folder / OOF_CSV)]


def finished_experiments(weights_dir: Path) -> list[str]:
    """Trained competition experiments with every fold trained and their OOF written (partial runs, such as
    ``folds.train_folds=[0]``, are left out and logged)."""
    out = []
    for name in trained_experiments(weights_dir):
        folder = weights_dir / name
        cfg = load_experiment_config(folder)
        if (folder / OOF_CSV).is_file() and not untrained_folds(cfg, folder, every_fold=True):
            out.append(name)
        else:
            log.warning("experiment %s is left out of the localised OOF: not all of its %d folds are trained",
                        name, cfg.folds.n_folds)
    return out


def localized_oof(data_dir: str | Path, weights_dir: str | Path, cfg: PredictConfig,
                  out_path: str | Path | None = None, show_progress: bool = True) -> pd.DataFrame:
    """Per model, the official score from localised points next to the same from annotated points
    (``oof.csv``) on the same studies, each with its 95% interval, and the paired difference (what
    localisation costs the model) with its interval.

    The models are ``cfg.experiments`` (default: :func:`finished_experiments` in ``weights_dir``).
    Each experiment's localised OOF is written to ``<experiment>/oof_localized.csv`` (04_ensemble.py fits
    on it with ``--set oof_file=oof_localized.csv``); with ``out_path``, the score table too.
    """
    data_dir, weights_dir = Path(data_dir), Path(weights_dir)
    loc_dir = localizer_folder(weights_dir, cfg.localizer)
    names = list(cfg.experiments) or finished_experiments(weights_dir)
    if not names:
        raise DataError(f"no experiment in {weights_dir} has all its folds trained and an {OOF_CSV}: run "
                        "scripts/02_train.py first")
    for n in names:   # a fold without its model would give its studies the prior, not a localised OOF
        folder = weights_dir / n
        check_trained(n, folder, "the localised OOF", every_fold=True)
        if not (folder / OOF_CSV).is_file():
            raise DataError(f"experiment {n}: {folder / OOF_CSV} not found: finish its training with "
                            "scripts/02_train.py (it writes the OOF once every fold is trained)")
    inputs = {"config": {**{k: getattr(cfg, k) for k in MADE_FROM}, "tta": stamp_value(cfg.tta)},
              "localizer": [file_state(f) for f in sorted(loc_dir.glob("*")) if f.is_file()],
              "experiments": {n: experiment_state(weights_dir / n) for n in names},
              "points": file_state(loc_dir / OOF_POINTS_CSV), "labels": file_state(data_dir / schema.TRAIN_CSV),
              "images": tree_state(images_dir(data_dir, "train"))}
    if out_path is not None and is_current(out_path, inputs) and all(
            (weights_dir / n / LOCALIZED_OOF_CSV).is_file() for n in names):
        log.info("%s is up to date (same localiser, models and settings)", out_path)
        return read_cost_table(out_path)
    device = resolve_device(cfg.device)
    points = read_csv_checked(loc_dir / OOF_POINTS_CSV, POINT_COLUMNS, "retrain the localiser with this version")
    models = {n: load_experiment_models(weights_dir / n, device) for n in names}
    fold_of = points.drop_duplicates("study_id").set_index("study_id").fold
    folds = None
    for name, m in models.items():
        folds = load_folds(weights_dir, m.cfg.folds.n_folds)
        split = folds.set_index("study_id").fold.reindex(fold_of.index)
        if split.isna().any() or not (split.to_numpy() == fold_of.to_numpy()).all():
            raise DataError(f"{name} was trained on other folds than the localiser ({m.cfg.folds.n_folds} folds); "
                            "localised OOF needs both on the same folds_<k>.csv")
    requests_of: dict[int, list[CropRequest]] = {}
    for r in points.dropna(subset=["series_id"]).itertuples(index=False):
        requests_of.setdefault(int(r.study_id), []).append(
            CropRequest(r.condition, r.level, int(r.series_id), int(r.instance_number), float(r.x), float(r.y)))
    per_fold: FoldRows = {}
    studies = fold_of.index.tolist()
    for sid in progress(studies, "localised oof", enabled=show_progress):
        fold = int(fold_of[sid])
        study_dir = images_dir(data_dir, "train") / str(sid)
        crops = crops_per_model(study_dir, requests_of.get(int(sid), []), models, None)
        for name, m in models.items():
            held_out = m.only_fold(fold)
            if held_out is None:   # checked above from config.yaml where there is one; here from the checkpoints
                raise DataError(untrained_message(name, weights_dir / name, [fold], m.cfg.folds.n_folds,
                                                  "the localised OOF"))
            add_fold_rows(per_fold, name, int(sid), classify(held_out, crops[name], device, cfg.tta, cfg.batch_size))
    row_ids = [r for sid in studies for r in schema.study_row_ids(int(sid))]
    labels = load_train_labels(data_dir)
    solution = solution_from_labels(labels[labels.study_id.isin(studies)])
    localized, annotated = {}, {}
    for n in names:
        rows = [r for fold_rows in per_fold.get(n, {}).values() for r in fold_rows]
        frame = pd.DataFrame(rows, columns=list(schema.SUBMISSION_COLUMNS))
        localized[n] = fill_out_of_fold(row_ids, frame, labels, folds)
        write_csv(localized[n], weights_dir / n / LOCALIZED_OOF_CSV)
        annotated[n] = read_csv_checked(weights_dir / n / OOF_CSV, schema.SUBMISSION_COLUMNS)
    table = localization_cost(solution, localized, annotated)
    if out_path is not None:
        write_csv(table, out_path)
        write_stamp(out_path, inputs)
    return table


def localization_cost(solution: pd.DataFrame, localized: dict[str, pd.DataFrame],
                      annotated: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model: the score at localised and at annotated points with their intervals, and the paired
    difference localised minus annotated (what the localiser costs the model) with its interval, all on
    the same resampled studies."""
    frames = {**{("localized", n): f for n, f in localized.items()},
              **{("annotated", n): f for n, f in annotated.items()}}
    keys = list(frames)
    names = {k: f"{k[0]}|{k[1]}" for k in keys}
    table = bootstrap.score_table(solution, {names[k]: frames[k] for k in keys}).set_index("model")
    costs = {n: bootstrap.score_table(solution, {"l": localized[n], "a": annotated[n]}, reference="a")
             .set_index("model").loc["l"] for n in localized}
    rows = []
    for n in localized:
        row: dict[str, Any] = {"model": n}
        for kind in ("localized", "annotated"):
            t = table.loc[names[(kind, n)]]
            row.update({f"{kind}_score": t.score, f"{kind}_lo": t.score_lo, f"{kind}_hi": t.score_hi})
        c = costs[n]
        row.update({"cost": c["diff"], "cost_lo": c.diff_lo, "cost_hi": c.diff_hi})
        rows.append(row)
    return pd.DataFrame(rows)


def read_cost_table(path: str | Path) -> pd.DataFrame:
    """A written :func:`localization_cost` table; one written before the columns were spelled ``localized_*``
    reads the same."""
    table = pd.read_csv(path)
    return table.rename(columns={c: c.replace("localised_", "localized_") for c in table.columns})


def cost_markdown(table: pd.DataFrame) -> str:
    """:func:`localization_cost` as markdown."""
    lines = ["| model | at localised points [95% CI] | at annotated points [95% CI] | "
             "localised - annotated [95% CI] |", "|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r.model} | {bootstrap.format_interval(r.localized_score, r.localized_lo, r.localized_hi, 4)}"
                     f" | {bootstrap.format_interval(r.annotated_score, r.annotated_lo, r.annotated_hi, 4)}"
                     f" | {bootstrap.format_interval(r.cost, r.cost_lo, r.cost_hi, 4, signed=True)} |")
    return "\n".join(lines) + "\n"
