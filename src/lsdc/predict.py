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
from typing import Any

import numpy as np
import pandas as pd
import torch

from lsdc import schema
from lsdc.crops import CropConfig, CropRequest, crop_study
from lsdc.errors import DataError
from lsdc.io import read_csv_checked, write_csv
from lsdc.train import COND_INDEX, PRIOR_JSON, load_checkpoint, resolve_device, select_logits

log = logging.getLogger(__name__)
LOCALIZED_OOF_CSV = "oof_localized.csv"


@dataclass
class PredictConfig:
    """Which trained pieces to use and how."""

    localizer: str = "localizer"          # folder of the localiser under the weights dir
    ensemble: str = "ensemble.json"       # blend spec from 04_ensemble.py; missing: the experiments equally
    experiments: list[str] = field(default_factory=list)   # only these (default: the ensemble's models)
    tta: bool = False                     # average with vertically flipped crops
    device: str = "auto"
    batch_size: int = 64


@dataclass
class ModelSet:
    """One experiment's fold models and the crop settings they were trained on."""

    name: str
    models: list[torch.nn.Module]
    crops: CropConfig
    mean: np.ndarray
    std: np.ndarray
    folds: list[int] = field(default_factory=list)  # the fold each model was trained for (held it out)
    n_folds: int = 0                                 # of the folds_<k>.csv it was trained on


def load_experiment(folder: Path, device: torch.device) -> ModelSet:
    ckpts = sorted(folder.glob("fold*/best.pt"))
    if not ckpts:
        raise DataError(f"experiment {folder} has no fold*/best.pt checkpoint")
    models, folds, meta = [], [], None
    for c in ckpts:
        m, meta = load_checkpoint(c, device)
        models.append(m)
        folds.append(int(meta.get("fold", c.parent.name.removeprefix("fold"))))
    assert meta is not None
    cfg = meta["experiment_config"]
    if cfg.n_classes != 3:
        raise DataError(f"experiment {folder} was trained on the paper task; only competition models predict")
    return ModelSet(folder.name, models, cfg.crops, np.asarray(meta["mean"], np.float32),
                    np.asarray(meta["std"], np.float32), folds, int(cfg.folds.n_folds))


@torch.no_grad()
def classify(ms: ModelSet, crops: dict[tuple[str, str], np.ndarray], device: torch.device, tta: bool,
             batch_size: int) -> dict[tuple[str, str], np.ndarray]:
    """Mean softmax over folds (and flips) of each crop's own condition: (condition, level) -> (3,)."""
    keys = list(crops)
    if not keys:
        return {}
    x = np.stack([crops[k] for k in keys]).astype(np.float32) / 255.0
    x = torch.from_numpy(((x - ms.mean) / ms.std).transpose(0, 3, 1, 2).copy())
    cond = torch.tensor([COND_INDEX[c] for c, _ in keys])
    views = [x, torch.flip(x, dims=[2])] if tta else [x]
    total = torch.zeros(len(keys), 3)
    for model in ms.models:
        for v in views:
            for s in range(0, len(keys), batch_size):
                logits = model(v[s:s + batch_size].to(device)).float().cpu()
                total[s:s + batch_size] += torch.softmax(select_logits(logits, cond[s:s + batch_size], 3), 1)
    total /= len(ms.models) * len(views)
    return {k: total[i].numpy() for i, k in enumerate(keys)}


def load_prior(weights_dir: Path, experiments: list[str]) -> dict[str, np.ndarray]:
    """The training prior per group, saved by 02_train.py beside each experiment."""
    for name in experiments:
        path = weights_dir / name / PRIOR_JSON
        if path.is_file():
            return {g: np.asarray(v, float) for g, v in json.loads(path.read_text()).items()}
    raise DataError(f"no {PRIOR_JSON} in {weights_dir}/<experiment>/ for {experiments}")


def submission_row_ids(data_dir: Path) -> list[str]:
    """sample_submission.csv's rows in its order; 25 per test study if that file is absent."""
    path = data_dir / schema.SAMPLE_SUBMISSION_CSV
    if path.is_file():
        return pd.read_csv(path, usecols=["row_id"]).row_id.tolist()
    from lsdc.localize import series_table

    ids = sorted(series_table(data_dir, "test").study_id.unique())
    return [r for s in ids for r in schema.study_row_ids(int(s))]


def localizer_folder(weights_dir: Path, name: str) -> Path:
    """The localiser's folder: ``name`` under the weights dir, or, in a pack made by :func:`pack` that
    holds no such folder, the localiser its manifest names (so a packed smoke run needs no --set)."""
    folder, manifest = weights_dir / name, weights_dir / "manifest.json"
    if not folder.is_dir() and manifest.is_file():
        packed = json.loads(manifest.read_text()).get("localizer")
        if packed and (weights_dir / packed).is_dir():
            log.info("localiser %r not in %s; using %r from its manifest", name, weights_dir, packed)
            return weights_dir / packed
    return folder


def predict(data_dir: str | Path, weights_dir: str | Path, out_path: str | Path, cfg: PredictConfig,
            progress: bool = True) -> pd.DataFrame:
    """Write the submission for every test study; returns it."""
    from lsdc.ensemble import apply_ensemble
    from lsdc.localize import Localizer, load_study_series, series_table
    from lsdc.metric import validate_submission

    data_dir, weights_dir = Path(data_dir), Path(weights_dir)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    spec, folders, model_sets = _load_models(weights_dir, cfg, device)
    names = list(model_sets)
    localizer = Localizer.load(localizer_folder(weights_dir, cfg.localizer))
    prior = load_prior(weights_dir, [f.name for f in folders.values()])
    row_ids = submission_row_ids(data_dir)
    series = series_table(data_dir, "test")
    studies = list(dict.fromkeys(schema.parse_row_id(r)[0] for r in row_ids))
    per_model: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    report: list[dict[str, Any]] = []
    for sid in _bar(studies, "predict", progress):
        study_dir = data_dir / schema.TEST_IMAGES / str(sid)
        try:
            found = load_study_series(study_dir, series[series.study_id == sid])
            requests, _ = localizer.locate(found)
            cache = {int(s.series_id): s for lst in found.values() for s in lst}
            crops = _crops_per_model(study_dir, requests, model_sets, cache)
            for name, ms in model_sets.items():
                probs = classify(ms, crops[name], device, cfg.tta, cfg.batch_size)
                for (cond, level), p in probs.items():
                    per_model[name].append({"row_id": schema.row_id(sid, cond, level),
                                            **dict(zip(schema.SEVERITY_COLUMNS, p.tolist()))})
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
    blended = apply_ensemble(spec, frames) if frames else pd.DataFrame(columns=list(schema.SUBMISSION_COLUMNS))
    sub = _fill_with_prior(row_ids, blended, prior)
    validate_submission(sub, required_row_ids=row_ids)
    write_csv(sub, out_path)
    write_csv(pd.DataFrame(report), Path(out_path).with_name("predict_report.csv"))
    log.info("wrote %s: %d rows, %d studies in %.1f s", out_path, len(sub), len(studies), time.perf_counter() - t0)
    return sub


def localized_oof(data_dir: str | Path, weights_dir: str | Path, cfg: PredictConfig,
                  out_path: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Out-of-fold scores from localised points instead of annotated ones: what the test rows will see.

    The localiser's held-out requests (``oof_points.csv``: each training study placed by the fold model
    that did not see it) are cropped like test studies and classified by each experiment's model of the
    same fold, then blended by the ensemble. Needs the localiser and the experiments on the same folds.
    Rows the localiser placed no crop for get the training prior, as at test time. Each experiment's
    localised OOF is written to ``<experiment>/oof_localized.csv`` (04_ensemble.py can fit on it with
    ``--set oof_file=oof_localized.csv``). Returns one row per model (and the ensemble) with the official
    score and its parts, localised and annotated side by side.
    """
    from lsdc.ensemble import apply_ensemble
    from lsdc.folds import load_folds, load_train_labels
    from lsdc.localize import OOF_POINTS_CSV
    from lsdc.metric import score, solution_from_labels

    data_dir, weights_dir = Path(data_dir), Path(weights_dir)
    device = resolve_device(cfg.device)
    points_path = localizer_folder(weights_dir, cfg.localizer) / OOF_POINTS_CSV
    points = read_csv_checked(points_path, ["study_id", "condition", "level", "series_id", "instance_number",
                                            "x", "y", "fold"], "retrain the localiser with this version")
    spec, folders, model_sets = _load_models(weights_dir, cfg, device)
    names = list(model_sets)
    fold_of = points.drop_duplicates("study_id").set_index("study_id").fold
    for n, ms in model_sets.items():
        split = load_folds(weights_dir, ms.n_folds).set_index("study_id").fold.reindex(fold_of.index)
        if split.isna().any() or not (split.to_numpy() == fold_of.to_numpy()).all():
            raise DataError(f"{n} was trained on other folds than the localiser ({ms.n_folds} folds); localised "
                            "OOF needs both on the same folds_<k>.csv")
    prior = load_prior(weights_dir, [f.name for f in folders.values()])
    requests_of: dict[int, list[CropRequest]] = {}
    for r in points.dropna(subset=["series_id"]).itertuples(index=False):
        requests_of.setdefault(int(r.study_id), []).append(
            CropRequest(r.condition, r.level, int(r.series_id), int(r.instance_number), float(r.x), float(r.y)))
    per_model: dict[str, list[dict]] = {n: [] for n in names}
    studies = fold_of.index.tolist()
    for sid in _bar(studies, "localised oof", progress):
        fold = int(fold_of[sid])
        study_dir = data_dir / schema.TRAIN_IMAGES / str(sid)
        crops = _crops_per_model(study_dir, requests_of.get(int(sid), []), model_sets, None)
        for n, ms in model_sets.items():
            if fold not in ms.folds:
                continue
            one = dataclasses.replace(ms, models=[ms.models[ms.folds.index(fold)]])
            for (cond, level), p in classify(one, crops[n], device, cfg.tta, cfg.batch_size).items():
                per_model[n].append({"row_id": schema.row_id(sid, cond, level),
                                     **dict(zip(schema.SEVERITY_COLUMNS, p.tolist()))})
    row_ids = [r for sid in studies for r in schema.study_row_ids(int(sid))]
    frames = {n: pd.DataFrame(rows, columns=list(schema.SUBMISSION_COLUMNS)) for n, rows in per_model.items()}
    labels = load_train_labels(data_dir)
    solution = solution_from_labels(labels[labels.study_id.isin(studies)])
    subs = {n: _fill_with_prior(row_ids, f, prior) for n, f in frames.items()}
    for n, sub in subs.items():
        write_csv(sub, folders[n] / LOCALIZED_OOF_CSV)
    subs["ensemble"] = _fill_with_prior(row_ids, apply_ensemble(spec, {n: f for n, f in frames.items() if len(f)}),
                                        prior)
    annotated = {n: read_csv_checked(folders[n] / "oof.csv", list(schema.SUBMISSION_COLUMNS)) for n in names}
    annotated["ensemble"] = apply_ensemble(spec, annotated)
    rows = []
    for n, sub in subs.items():
        loc = score(solution, sub)
        ann = score(solution, _fill_with_prior(row_ids, annotated[n], prior))
        rows.append({"model": n, **{f"localised_{k}": v for k, v in loc.items()},
                     **{f"annotated_{k}": v for k, v in ann.items()}})
    table = pd.DataFrame(rows)
    if out_path is not None:
        write_csv(subs["ensemble"], out_path)
        write_csv(table, Path(out_path).with_name("localized_oof_scores.csv"))
    return table


def _load_models(weights_dir: Path, cfg: PredictConfig, device: torch.device
                 ) -> tuple[Any, dict[str, Path], dict[str, ModelSet]]:
    """The ensemble spec (equal weights when there is none or it lacks a model), and per experiment its
    folder and fold models, in the spec's (or ``cfg.experiments``') order."""
    from lsdc.ensemble import load_ensemble

    spec_path = weights_dir / cfg.ensemble
    spec = load_ensemble(spec_path) if spec_path.is_file() else None
    names = cfg.experiments or (spec.models if spec else [])
    if not names:
        raise DataError(f"{spec_path} not found and no experiments given: run scripts/04_ensemble.py "
                        "or pass --set experiments=[name]")
    folders = {n: weights_dir / (spec.experiments.get(n, n) if spec else n) for n in names}
    model_sets = {n: load_experiment(f, device) for n, f in folders.items()}
    if spec is None or set(names) - set(spec.models):
        spec = _equal_spec(names)
    return spec, folders, model_sets


def _crops_per_model(study_dir: Path, requests: list[CropRequest], model_sets: dict[str, ModelSet],
                     series_cache: dict[int, Any] | None) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """Each model's crops of a study, cut once per distinct crop setting (series read once when cached)."""
    by_setting: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    out = {}
    for name, ms in model_sets.items():
        key = repr(ms.crops)
        if key not in by_setting:
            _, by_setting[key] = crop_study(study_dir, requests, ms.crops, None, series_cache=series_cache)
        out[name] = by_setting[key]
    return out


def _bar(items: list, desc: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from lsdc.cli import progress

    return progress(items, desc=desc, unit="study")


def _equal_spec(names: list[str]) -> Any:
    from lsdc.ensemble import EnsembleSpec

    w = {g: {n: 1.0 / len(names) for n in names} for g in schema.GROUPS}
    return EnsembleSpec(models=list(names), weights=w, temperatures={g: 1.0 for g in schema.GROUPS},
                        experiments={n: n for n in names})


def _fill_with_prior(row_ids: list[str], blended: pd.DataFrame, prior: dict[str, np.ndarray]) -> pd.DataFrame:
    cols = list(schema.SEVERITY_COLUMNS)
    out = pd.DataFrame({"row_id": row_ids})
    vals = blended.set_index("row_id")[cols] if len(blended) else pd.DataFrame(columns=cols)
    vals = vals.reindex(row_ids)
    fallback = np.array([prior[schema.group_of_column(r.split("_", 1)[1])] for r in row_ids])
    arr = vals.to_numpy(dtype=float, copy=True)
    bad = ~np.isfinite(arr).all(1)
    arr[bad] = fallback[bad]
    arr = np.clip(arr, 1e-7, None)
    arr /= arr.sum(1, keepdims=True)
    for j, c in enumerate(cols):
        out[c] = arr[:, j]
    return out



def pack(weights_dir: str | Path, out_dir: str | Path, cfg: PredictConfig, code_root: str | Path | None = None) -> Path:
    """Copy what 05_predict.py needs into one folder to upload as a Kaggle dataset.

    The localiser, ensemble.json, and per experiment its config, prior and fold checkpoints; with
    ``code_root``, also src/, scripts/ and configs/ so the same dataset carries the code. Written to a
    temporary folder first and renamed, so a half-copied pack never looks complete.
    """
    import shutil

    from lsdc.ensemble import load_ensemble

    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    spec_path = weights_dir / cfg.ensemble
    spec = load_ensemble(spec_path) if spec_path.is_file() else None
    names = cfg.experiments or (spec.models if spec else [])
    if not names:
        raise DataError(f"{spec_path} not found and no experiments given: nothing to pack")
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    loc = weights_dir / cfg.localizer
    if not (loc / "localizer.pt").is_file():
        raise DataError(f"{loc / 'localizer.pt'} not found: train the localiser first")
    shutil.copytree(loc, tmp / cfg.localizer, ignore=shutil.ignore_patterns("*.csv"))
    if spec_path.is_file():
        shutil.copy2(spec_path, tmp / cfg.ensemble)
    manifest: dict[str, Any] = {"experiments": {}, "localizer": cfg.localizer}
    for name in names:
        folder = weights_dir / (spec.experiments.get(name, name) if spec else name)
        ckpts = sorted(folder.glob("fold*/best.pt"))
        if not ckpts:
            raise DataError(f"experiment {folder} has no fold*/best.pt to pack")
        dest = tmp / folder.name
        for f in [folder / "config.yaml", folder / PRIOR_JSON, folder / "metrics.json", *ckpts]:
            if f.is_file():
                (dest / f.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / f.relative_to(folder))
        manifest["experiments"][name] = [str(c.relative_to(weights_dir)) for c in ckpts]
    if code_root is not None:
        root = Path(code_root)
        for part in ("src", "scripts", "configs"):
            skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(root / part, tmp / "code" / part, ignore=skip)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
