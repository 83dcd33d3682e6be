"""Training the localiser fold by fold, resumable, with its out-of-fold metrics."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from lsdc import config as config_mod
from lsdc import schema
from lsdc.data import images_dir, load_series_descriptions
from lsdc.errors import ConfigError, DataError
from lsdc.experiment import CONFIG_YAML, METRICS_JSON, resolve_device
from lsdc.folds import folds_csv, load_folds
from lsdc.io import write_csv, write_json
from lsdc.localize.config import LOCALIZER_PT, OOF_POINTS_CSV, LocalizerExperiment
from lsdc.localize.fit import fit_view, view_samples
from lsdc.localize.localizer import Localizer
from lsdc.localize.oof import evaluate, localizer_metrics
from lsdc.localize.targets import annotated_points
from lsdc.localize.views import CANAL_ROI, VIEWS
from lsdc.stamps import file_state, is_current, tree_state, write_stamp

log = logging.getLogger(__name__)


def localizer_inputs(exp: LocalizerExperiment, data_dir: Path, output_dir: Path) -> dict[str, Any]:
    """What a trained localiser is made from: its settings, the folds, the coordinates and the images."""
    return {"version": 3, "config": config_mod.to_dict(exp),   # 3: shrunk regions low-pass filtered
            "folds": file_state(output_dir / folds_csv(exp.folds.n_folds)),
            "coordinates": file_state(data_dir / schema.COORDS_CSV),
            "series": file_state(data_dir / schema.TRAIN_SERIES_CSV),
            "images": tree_state(images_dir(data_dir, "train"))}


def train_localizer(exp: LocalizerExperiment, data_dir: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Fold detectors with out-of-fold localisation metrics; the saved localiser averages the fold models.

    Each finished fold is kept in ``fold<k>/`` with a record of its inputs, so an interrupted run resumes
    at the first unfinished fold; a localiser whose inputs have not changed is not trained again.
    """
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    cfg = exp.localizer
    if cfg.stride not in (2, 4):
        raise ConfigError(f"config key 'localizer.stride' must be 2 or 4, got {cfg.stride}")
    out = output_dir / exp.name
    folds = load_folds(output_dir, exp.folds.n_folds)
    inputs = localizer_inputs(exp, data_dir, output_dir)
    if is_current(out / LOCALIZER_PT, inputs) and (out / METRICS_JSON).is_file():
        log.info("localiser %s is up to date", out)
        return json.loads((out / METRICS_JSON).read_text())
    config_mod.save(exp, out / CONFIG_YAML)
    device = resolve_device(cfg.device)
    series = load_series_descriptions(data_dir, "train")
    points = annotated_points(data_dir, folds.study_id.tolist())
    if not points:
        raise DataError(f"{data_dir / schema.COORDS_CSV} has no usable coordinates to train the localiser")
    t0 = time.perf_counter()
    fold_locs, evals = [], []
    for fold in sorted(folds.fold.unique()):
        fold_out = out / f"fold{fold}"
        if is_current(fold_out / LOCALIZER_PT, inputs) and (fold_out / OOF_POINTS_CSV).is_file():
            log.info("localizer fold %d already trained; kept", fold)
            fold_locs.append(Localizer.load(fold_out))
            evals.append(pd.read_csv(fold_out / OOF_POINTS_CSV))
            continue
        held = folds[folds.fold == fold].study_id.astype(int).tolist()
        tr = {s: p for s, p in points.items() if s not in set(held)}
        models = {}
        for view in VIEWS:
            if view is CANAL_ROI and cfg.canal_roi_mm <= 0:
                continue
            samples = view_samples(view, data_dir, tr, series, cfg)
            log.info("localizer fold %d, %s view: %d training studies", fold, view.name, len(samples))
            models[view.name] = [fit_view(view, samples, cfg, device)]
        fold_loc = Localizer(models, cfg)
        ev = evaluate(fold_loc, data_dir, points, series, held).assign(fold=int(fold))
        fold_loc.save(fold_out)
        write_csv(ev, fold_out / OOF_POINTS_CSV)
        write_stamp(fold_out / LOCALIZER_PT, inputs)
        fold_locs.append(fold_loc)
        evals.append(ev)
    localizer = Localizer({v: [m for fl in fold_locs for m in fl.models[v]] for v in fold_locs[0].models}, cfg)
    oof = pd.concat(evals, ignore_index=True)
    write_csv(oof, out / OOF_POINTS_CSV)
    metrics = {"train_seconds": time.perf_counter() - t0, **localizer_metrics(oof)}
    write_json(out / METRICS_JSON, metrics)
    localizer.save(out)
    write_stamp(out / LOCALIZER_PT, inputs)
    log.info("localizer OOF: median error %.1f mm; per group %s", metrics["median_error_mm"],
             json.dumps({g: {"mm": round(v["median_error_mm"], 1), "slice": round(v["slice_accuracy"], 3)}
                         for g, v in metrics["per_group"].items()}))
    return metrics
