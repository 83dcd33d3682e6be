"""Inference on studies without coordinates: localise, crop, classify with every model and fold, blend.

Everything comes from local folders (``weights_dir``: the outputs folder, or a Kaggle dataset made by
``scripts/pack_kaggle.py``). A study that cannot be fully read still gets all of its rows: from the models
that could run on the conditions that could be placed, and the training prior for the rest; the log names
the study and the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from lsdc import schema
from lsdc.crops import CropRequest, crop_study
from lsdc.data import images_dir, load_series_descriptions, load_study_series, submission_row_ids
from lsdc.dicom import Series
from lsdc.ensemble import SPEC_JSON, EnsembleSpec, blend_folds, equal_spec, load_ensemble
from lsdc.errors import DataError
from lsdc.experiment import (
    BEST_PT,
    COND_INDEX,
    CONFIG_YAML,
    PRIOR_JSON,
    ExperimentModels,
    fill_with_prior,
    load_experiment_config,
    load_experiment_models,
    load_prior,
    resolve_device,
    select_logits,
    to_input,
)
from lsdc.io import write_csv
from lsdc.localize import LOCALIZER_PT, Localizer, find_localizer
from lsdc.metric import validate_submission
from lsdc.progress import progress
from lsdc.stamps import file_state, is_current, tree_state, write_stamp

log = logging.getLogger(__name__)

MANIFEST_JSON = "manifest.json"   # written by lsdc.pack: what a Kaggle pack holds
REPORT_CSV = "predict_report.csv"
FOLD_PREDICTIONS_CSV = "fold_predictions.csv"   # every fold model's test predictions (predict.fold_predictions)
Crops = dict[tuple[str, str], np.ndarray]


@dataclass
class PredictConfig:
    """Which trained pieces to use and how."""

    localizer: str = ""                   # folder of the localiser under the weights dir ("": the only one there)
    ensemble: str = SPEC_JSON             # blend spec from 04_ensemble.py; missing: the experiments equally
    experiments: list[str] = field(default_factory=list)   # only these (default: the ensemble's models, or
    #                                                        the only trained experiment there)
    tta: bool = False                     # average with vertically flipped crops
    # How each experiment's fold models are combined before the blend (lsdc.ensemble.FOLD_AVERAGES):
    # "logits", the normalised geometric mean of the folds, then the spec's temperatures, scored best on the
    # quality bench's test studies for every model (benchmarks/QUALITY.md); "tempered" averages the folds
    # after the temperatures (the average of what the spec was fitted on); "probs" tempers their mean.
    fold_average: Literal["tempered", "probs", "logits"] = "logits"
    # Also write every fold model's test predictions (fold_predictions.csv beside the submission), of every
    # model the ensemble considered (not only those it blends), e.g. to compare the single models and the
    # fold averages on labeled test studies.
    fold_predictions: bool = False
    device: str = "auto"
    batch_size: int = 64
    # A study that cannot be read still gets all its rows (prior where no model ran); when more than this
    # share of the studies fail, something is systematically wrong and prediction stops with an error.
    max_failed_share: float = 0.5


def trained_experiments(weights_dir: Path) -> list[str]:
    """Folders under ``weights_dir`` holding a trained competition-task experiment (fold checkpoints)."""
    found = []
    for d in sorted(p for p in weights_dir.iterdir() if p.is_dir()) if weights_dir.is_dir() else []:
        if any(d.glob(f"fold*/{BEST_PT}")):
            try:
                if load_experiment_config(d).train.task == "competition":
                    found.append(d.name)
            except DataError:
                continue
    return found


def ensemble_plan(weights_dir: Path, cfg: PredictConfig) -> tuple[EnsembleSpec, dict[str, Path]]:
    """Which experiments to blend and how: the spec (equal weights when there is none or it lacks a
    model) and each model's folder (with ``cfg.fold_predictions``, also those the spec considered and left
    out). Without a spec or ``cfg.experiments``, the only trained experiment in ``weights_dir`` is used; with
    several, DataError lists them."""
    spec_path = weights_dir / cfg.ensemble
    spec = load_ensemble(spec_path) if spec_path.is_file() else None
    names = cfg.experiments or (spec.models if spec else [])
    if not names:
        found = trained_experiments(weights_dir)
        if len(found) != 1:
            choice = f"found {', '.join(found)}" if found else "no trained experiment there"
            raise DataError(f"{spec_path} not found and no experiments given ({choice}): run "
                            "scripts/04_ensemble.py, or choose with --set experiments=[name,...]")
        log.info("no %s in %s: using its only experiment, %s", cfg.ensemble, weights_dir, found[0])
        names = found
    folders = {n: weights_dir / (spec.experiments.get(n, n) if spec else n) for n in names}
    if cfg.fold_predictions and spec is not None:   # every model the ensemble considered, for the record
        folders.update({n: weights_dir / d for n, d in spec.experiments.items()
                        if n not in folders and (weights_dir / d).is_dir()})
    if spec is None or set(names) - set(spec.models):
        spec = equal_spec(names)
    return spec, folders


def load_ensemble_models(weights_dir: Path, cfg: PredictConfig, device: torch.device
                         ) -> tuple[EnsembleSpec, dict[str, ExperimentModels]]:
    """The ensemble spec and every experiment's fold models, keyed by model name in the spec's order."""
    spec, folders = ensemble_plan(weights_dir, cfg)
    return spec, {n: load_experiment_models(f, device) for n, f in folders.items()}


def experiment_folders(weights_dir: Path, models: dict[str, ExperimentModels]) -> list[Path]:
    return [weights_dir / m.name for m in models.values()]


@torch.no_grad()
def classify(models: ExperimentModels, crops: Crops, device: torch.device, tta: bool, batch_size: int
             ) -> dict[int, dict[tuple[str, str], np.ndarray]]:
    """Per fold model, the softmax of each crop's own condition (mean over the flips with ``tta``):
    fold -> (condition, level) -> (3,). The folds are combined later, with the ensemble's temperatures
    (:func:`lsdc.ensemble.blend_folds`).

    Each fold model sees the crops standardised with the statistics it was trained with.
    """
    keys = list(crops)
    if not keys:
        return {}
    stacked = np.stack([crops[k] for k in keys])
    cond = torch.tensor([COND_INDEX[c] for c, _ in keys])
    out = {}
    for fm in models.folds:
        x = to_input(stacked, fm.mean, fm.std)
        views = [x, torch.flip(x, dims=[2])] if tta else [x]
        total = torch.zeros(len(keys), 3)
        for v in views:
            for s in range(0, len(keys), batch_size):
                logits = fm.model(v[s:s + batch_size].to(device)).float().cpu()
                total[s:s + batch_size] += torch.softmax(select_logits(logits, cond[s:s + batch_size], 3), 1)
        total /= len(views)
        out[fm.fold] = {k: total[i].numpy() for i, k in enumerate(keys)}
    return out


def crops_per_model(study_dir: Path, requests: list[CropRequest], models: dict[str, ExperimentModels],
                    series_cache: dict[int, Series] | None) -> dict[str, Crops]:
    """Each model's crops of a study, cut once per distinct crop setting (series read once when cached)."""
    by_setting: dict[str, Crops] = {}
    out = {}
    for name, m in models.items():
        key = m.crops.dirname
        if key not in by_setting:
            _, by_setting[key] = crop_study(study_dir, requests, m.crops, None, series_cache=series_cache)
        out[name] = by_setting[key]
    return out


def prediction_rows(study_id: int, probs: dict[tuple[str, str], np.ndarray]) -> list[dict[str, Any]]:
    """Submission rows of one study's classified cells."""
    return [{"row_id": schema.row_id(study_id, cond, level), **dict(zip(schema.SEVERITY_COLUMNS, p.tolist()))}
            for (cond, level), p in probs.items()]


FoldRows = dict[str, dict[int, list[dict[str, Any]]]]   # model -> fold -> submission rows


def add_fold_rows(rows: FoldRows, name: str, study_id: int, probs: dict[int, dict[tuple[str, str], np.ndarray]]
                  ) -> None:
    """Append one study's per-fold predictions (:func:`classify`) of model ``name`` to ``rows``."""
    for fold, cells in probs.items():
        rows.setdefault(name, {}).setdefault(fold, []).extend(prediction_rows(study_id, cells))


def fold_frames(rows: FoldRows) -> dict[str, list[pd.DataFrame]]:
    """Model -> one submission-format frame per fold model (folds in order)."""
    return {n: [pd.DataFrame(r, columns=list(schema.SUBMISSION_COLUMNS)) for _, r in sorted(folds.items())]
            for n, folds in rows.items() if folds}


def fold_table(rows: FoldRows) -> pd.DataFrame:
    """Every fold model's predictions in one long frame: model, fold, row_id, probabilities."""
    parts = [pd.DataFrame(r, columns=list(schema.SUBMISSION_COLUMNS)).assign(model=n, fold=f)
             for n, folds in rows.items() for f, r in sorted(folds.items())]
    cols = ["model", "fold", *schema.SUBMISSION_COLUMNS]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def localizer_folder(weights_dir: Path, name: str) -> Path:
    """The localiser's folder under the weights dir: ``name`` when given; else, in a Kaggle pack, the one
    its manifest names; else the only trained localiser there (see :func:`lsdc.localize.find_localizer`)."""
    manifest = weights_dir / MANIFEST_JSON
    if not name and manifest.is_file():
        packed = json.loads(manifest.read_text()).get("localizer")
        if packed and (weights_dir / packed / LOCALIZER_PT).is_file():
            return weights_dir / packed
    return find_localizer(weights_dir, name)


def predict_submission(data_dir: str | Path, weights_dir: str | Path, out_path: str | Path, cfg: PredictConfig,
                       show_progress: bool = True) -> pd.DataFrame:
    """Write the submission for every test study (and ``predict_report.csv`` beside it); returns it.

    A submission made from the same weights, test data and settings is kept, not predicted again.
    """
    data_dir, weights_dir, out_path = Path(data_dir), Path(weights_dir), Path(out_path)
    t0 = time.perf_counter()
    loc_dir = localizer_folder(weights_dir, cfg.localizer)
    inputs = prediction_inputs(data_dir, weights_dir, loc_dir, cfg)
    if is_current(out_path, inputs):
        log.info("%s is up to date (same weights, test data and settings)", out_path)
        return pd.read_csv(out_path)
    device = resolve_device(cfg.device)
    spec, models = load_ensemble_models(weights_dir, cfg, device)
    localizer = Localizer.load(loc_dir, device)
    prior = load_prior(experiment_folders(weights_dir, models))
    row_ids = submission_row_ids(data_dir)
    series = load_series_descriptions(data_dir, "test")
    studies = list(dict.fromkeys(schema.parse_row_id(r)[0] for r in row_ids))
    per_fold: FoldRows = {}
    report: list[dict[str, Any]] = []
    for sid in progress(studies, "predict", enabled=show_progress):
        study_dir = images_dir(data_dir, "test") / str(sid)
        try:
            found = load_study_series(study_dir, series[series.study_id == sid])
            requests, _ = localizer.locate(found)
            cache = {int(s.series_id): s for lst in found.values() for s in lst}
            crops = crops_per_model(study_dir, requests, models, cache)
            for name, m in models.items():
                add_fold_rows(per_fold, name, sid, classify(m, crops[name], device, cfg.tta, cfg.batch_size))
            n_placed = len({(r.condition, r.level) for r in requests})
            missing = sorted(set(schema.SERIES_DESCRIPTIONS) - set(found))
            if n_placed < len(schema.LABEL_COLUMNS) or missing:
                log.warning("study %s: %d of 25 cells localised%s; the rest get the training prior", sid, n_placed,
                            f" (no usable {', '.join(missing)})" if missing else "")
            report.append({"study_id": sid, "cells_localised": n_placed, "missing_series": ";".join(missing),
                           "error": ""})
        except Exception as exc:  # one unreadable study never stops the submission
            log.warning("study %s: could not be processed (%s: %s); all its rows get the training prior",
                        sid, type(exc).__name__, exc)
            report.append({"study_id": sid, "cells_localised": 0, "missing_series": "", "error": str(exc)})
    check_failures(report, cfg.max_failed_share)
    frames = fold_frames(per_fold)
    blended = blend_folds(spec, frames, cfg.fold_average) if frames else None
    sub = fill_with_prior(row_ids, blended, prior)
    validate_submission(sub, required_row_ids=row_ids)
    write_csv(sub, out_path)
    write_csv(pd.DataFrame(report), out_path.with_name(REPORT_CSV))
    if cfg.fold_predictions:
        write_csv(fold_table(per_fold), out_path.with_name(FOLD_PREDICTIONS_CSV))
    write_stamp(out_path, inputs)
    log.info("wrote %s: %d rows, %d studies in %.1f s", out_path, len(sub), len(studies), time.perf_counter() - t0)
    return sub


def check_failures(report: list[dict[str, Any]], max_share: float) -> None:
    """DataError naming the studies when more than ``max_share`` of them got no model prediction at all
    (unreadable, or nothing localised): a systematic failure must not pass as an all-prior submission."""
    failed = [r["study_id"] for r in report if r["error"] or not r["cells_localised"]]
    if report and len(failed) > max_share * len(report):
        shown = ", ".join(str(s) for s in failed[:5]) + (" ..." if len(failed) > 5 else "")
        reasons = sorted({r["error"] for r in report if r["error"]})[:2]
        raise DataError(f"{len(failed)} of {len(report)} test studies got no prediction (more than "
                        f"max_failed_share={max_share}): {shown}" + (f"; e.g. {'; '.join(reasons)}" if reasons else ""))


def weights_state(weights_dir: Path, loc_dir: Path, cfg: PredictConfig) -> dict[str, Any]:
    """The state of everything prediction reads from the weights folder: the localiser, the spec, and
    each experiment's config, prior and fold checkpoints."""
    spec, folders = ensemble_plan(weights_dir, cfg)
    return {"localizer": [file_state(f) for f in sorted(loc_dir.glob("*")) if f.is_file()],
            "spec": file_state(weights_dir / cfg.ensemble), "blend": spec.to_dict(),
            "experiments": {n: [file_state(f) for f in [d / CONFIG_YAML, d / PRIOR_JSON,
                                                          *sorted(d.glob(f"fold*/{BEST_PT}"))]]
                            for n, d in folders.items()}}


def prediction_inputs(data_dir: Path, weights_dir: Path, loc_dir: Path, cfg: PredictConfig) -> dict[str, Any]:
    """What a submission is made from: the settings, the weights and the test data."""
    return {"config": dataclasses.asdict(cfg), "weights": weights_state(weights_dir, loc_dir, cfg),
            "series": file_state(data_dir / schema.TEST_SERIES_CSV),
            "sample": file_state(data_dir / schema.SAMPLE_SUBMISSION_CSV),
            "images": tree_state(images_dir(data_dir, "test"))}
