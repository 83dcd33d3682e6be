"""Inference on studies without coordinates: localise, crop, classify with every model and fold, blend.

Everything comes from local folders (``weights_dir``: the outputs folder, or a Kaggle dataset made by
``scripts/pack_kaggle.py``). A study that cannot be fully read still gets all of its rows: from the models
that could run on the conditions that could be placed, and the training prior for the rest; the log names
the study and the reason.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lsdc import schema
from lsdc.crops import CropRequest, crop_study
from lsdc.data import images_dir, load_series_descriptions, load_study_series, submission_row_ids
from lsdc.dicom import Series
from lsdc.ensemble import EnsembleSpec, apply_ensemble, equal_spec, load_ensemble
from lsdc.errors import DataError
from lsdc.experiment import (
    COND_INDEX,
    ExperimentModels,
    fill_with_prior,
    load_experiment_models,
    load_prior,
    resolve_device,
    select_logits,
    to_input,
)
from lsdc.io import write_csv
from lsdc.localize import Localizer
from lsdc.metric import validate_submission
from lsdc.progress import progress

log = logging.getLogger(__name__)

MANIFEST_JSON = "manifest.json"   # written by lsdc.pack: what a Kaggle pack holds
REPORT_CSV = "predict_report.csv"
Crops = dict[tuple[str, str], np.ndarray]


@dataclass
class PredictConfig:
    """Which trained pieces to use and how."""

    localizer: str = "localizer"          # folder of the localiser under the weights dir
    ensemble: str = "ensemble.json"       # blend spec from 04_ensemble.py; missing: the experiments equally
    experiments: list[str] = field(default_factory=list)   # only these (default: the ensemble's models)
    tta: bool = False                     # average with vertically flipped crops
    device: str = "auto"
    batch_size: int = 64


def load_ensemble_models(weights_dir: Path, cfg: PredictConfig, device: torch.device
                         ) -> tuple[EnsembleSpec, dict[str, ExperimentModels]]:
    """The ensemble spec (equal weights when there is none or it lacks a model) and every experiment's
    fold models, keyed by model name in the spec's (or ``cfg.experiments``') order."""
    spec_path = weights_dir / cfg.ensemble
    spec = load_ensemble(spec_path) if spec_path.is_file() else None
    names = cfg.experiments or (spec.models if spec else [])
    if not names:
        raise DataError(f"{spec_path} not found and no experiments given: run scripts/04_ensemble.py "
                        "or pass --set experiments=[name]")
    folders = {n: weights_dir / (spec.experiments.get(n, n) if spec else n) for n in names}
    models = {n: load_experiment_models(f, device) for n, f in folders.items()}
    if spec is None or set(names) - set(spec.models):
        spec = equal_spec(names)
    return spec, models


def experiment_folders(weights_dir: Path, models: dict[str, ExperimentModels]) -> list[Path]:
    return [weights_dir / m.name for m in models.values()]


@torch.no_grad()
def classify(models: ExperimentModels, crops: Crops, device: torch.device, tta: bool, batch_size: int
             ) -> dict[tuple[str, str], np.ndarray]:
    """Mean softmax over folds (and flips) of each crop's own condition: (condition, level) -> (3,).

    Each fold model sees the crops standardised with the statistics it was trained with.
    """
    keys = list(crops)
    if not keys:
        return {}
    stacked = np.stack([crops[k] for k in keys])
    cond = torch.tensor([COND_INDEX[c] for c, _ in keys])
    total = torch.zeros(len(keys), 3)
    n_views = 2 if tta else 1
    for fm in models.folds:
        x = to_input(stacked, fm.mean, fm.std)
        views = [x, torch.flip(x, dims=[2])] if tta else [x]
        for v in views:
            for s in range(0, len(keys), batch_size):
                logits = fm.model(v[s:s + batch_size].to(device)).float().cpu()
                total[s:s + batch_size] += torch.softmax(select_logits(logits, cond[s:s + batch_size], 3), 1)
    total /= len(models.folds) * n_views
    return {k: total[i].numpy() for i, k in enumerate(keys)}


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


def localizer_folder(weights_dir: Path, name: str) -> Path:
    """The localiser's folder: ``name`` under the weights dir, or, in a Kaggle pack that holds no such
    folder, the localiser its manifest names (so a packed smoke run needs no --set)."""
    folder, manifest = weights_dir / name, weights_dir / MANIFEST_JSON
    if not folder.is_dir() and manifest.is_file():
        packed = json.loads(manifest.read_text()).get("localizer")
        if packed and (weights_dir / packed).is_dir():
            log.info("localiser %r not in %s; using %r from its manifest", name, weights_dir, packed)
            return weights_dir / packed
    return folder


def predict_submission(data_dir: str | Path, weights_dir: str | Path, out_path: str | Path, cfg: PredictConfig,
                       show_progress: bool = True) -> pd.DataFrame:
    """Write the submission for every test study (and ``predict_report.csv`` beside it); returns it."""
    data_dir, weights_dir = Path(data_dir), Path(weights_dir)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    spec, models = load_ensemble_models(weights_dir, cfg, device)
    localizer = Localizer.load(localizer_folder(weights_dir, cfg.localizer))
    prior = load_prior(experiment_folders(weights_dir, models))
    row_ids = submission_row_ids(data_dir)
    series = load_series_descriptions(data_dir, "test")
    studies = list(dict.fromkeys(schema.parse_row_id(r)[0] for r in row_ids))
    per_model: dict[str, list[dict[str, Any]]] = {n: [] for n in models}
    report: list[dict[str, Any]] = []
    for sid in progress(studies, "predict", enabled=show_progress):
        study_dir = images_dir(data_dir, "test") / str(sid)
        try:
            found = load_study_series(study_dir, series[series.study_id == sid])
            requests, _ = localizer.locate(found)
            cache = {int(s.series_id): s for lst in found.values() for s in lst}
            crops = crops_per_model(study_dir, requests, models, cache)
            for name, m in models.items():
                per_model[name] += prediction_rows(sid, classify(m, crops[name], device, cfg.tta, cfg.batch_size))
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
    frames = {n: pd.DataFrame(rows, columns=list(schema.SUBMISSION_COLUMNS)) for n, rows in per_model.items()}
    frames = {n: f for n, f in frames.items() if len(f)}
    blended = apply_ensemble(spec, frames) if frames else None
    sub = fill_with_prior(row_ids, blended, prior)
    validate_submission(sub, required_row_ids=row_ids)
    write_csv(sub, out_path)
    write_csv(pd.DataFrame(report), Path(out_path).with_name(REPORT_CSV))
    log.info("wrote %s: %d rows, %d studies in %.1f s", out_path, len(sub), len(studies), time.perf_counter() - t0)
    return sub
