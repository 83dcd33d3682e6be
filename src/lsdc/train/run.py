"""The experiment: every selected fold trained (resumed, kept or trained again as its inputs say), then the
out-of-fold predictions and their scores; the folds across several devices at once; the settings that make
an experiment what it is."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import INDEX_CSV, load_array, prepare
from lsdc.data import load_train_labels
from lsdc.errors import ConfigError
from lsdc.experiment import (
    CONFIG_YAML,
    FOLD_SELECTED_OOF_CSV,
    FOLD_SELECTED_PREDS_CSV,
    LAST_PT,
    METRICS_JSON,
    OOF_CSV,
    PAPER_OOF_CSV,
    VAL_PREDS_CSV,
    ExperimentConfig,
    fill_out_of_fold,
    fold_dir,
    prior_probabilities,
    resolve_device,
    save_prior,
)
from lsdc.folds import folds_csv, load_folds
from lsdc.io import write_csv, write_json
from lsdc.localize import OOF_POINTS_CSV, find_localizer
from lsdc.metric import score, solution_from_labels
from lsdc.paper import paper_summary
from lsdc.stamps import file_state, is_current, is_stale, stamp_path, write_stamp
from lsdc.train.batches import ANNOTATED, BOTH, LOCALIZED, training_table
from lsdc.train.config import PAPER_RECIPE
from lsdc.train.distributed import barrier, dist_context
from lsdc.train.fold import train_fold

log = logging.getLogger(__package__)   # the package's logger: log lines name lsdc.train, as before the split


def experiment_table(cfg: ExperimentConfig, data_dir: Path, output_dir: Path, folds: pd.DataFrame
                     ) -> tuple[pd.DataFrame, list[Path]]:
    """The crops an experiment trains on (``train.crops_from``): at annotated points, at the points the
    localiser placed held out (cut here from its ``oof_points.csv`` if needed), or both; the annotated ones
    are always there, for validation. Also the crop folders they come from."""
    dirs = [output_dir / cfg.crops.dirname]
    table = training_table(cfg, dirs[0], folds)
    if cfg.train.crops_from == ANNOTATED:
        return table, dirs
    points = find_localizer(output_dir, cfg.train.localizer) / OOF_POINTS_CSV
    dirs.append(prepare(data_dir, output_dir, cfg.crops, points_csv=points))
    localized = training_table(cfg, dirs[1], folds, LOCALIZED)
    log.info("training on crops at %s points: %d at annotated, %d at localised points", cfg.train.crops_from,
             len(table), len(localized))
    table["trains"] = cfg.train.crops_from == BOTH
    return pd.concat([table, localized], ignore_index=True), dirs


def assemble_oof(preds: pd.DataFrame, train: pd.DataFrame, folds: pd.DataFrame, studies: set[int]
                 ) -> tuple[pd.DataFrame, int]:
    """Submission-format OOF: all 25 rows of every study in ``studies``.

    Crops predicted out of fold give their probabilities; every other row gets the prior of the other
    folds' labels. Returns the frame and the number of labeled rows that fell back to the prior.
    """
    row_ids = [r for s in sorted(studies) for r in schema.study_row_ids(s)]
    rid = [schema.row_id(s, c, lv) for s, c, lv in zip(preds.study_id, preds.condition, preds.level)]
    have = preds.assign(row_id=rid)[["row_id", *schema.SEVERITY_COLUMNS]]
    have = have[have.row_id.isin(set(row_ids))]
    oof = fill_out_of_fold(row_ids, have, train, folds)
    labeled = set(solution_from_labels(train[train.study_id.isin(studies)]).row_id)
    return oof, len(labeled - set(have.row_id))


def train_experiment(cfg: ExperimentConfig, data_dir: str | Path, output_dir: str | Path,
                     summarise: bool = True) -> dict[str, Any]:
    """Train every selected fold, then write the out-of-fold predictions and their scores.

    Under ``torchrun`` (WORLD_SIZE > 1) every process trains the same folds in step (DistributedDataParallel)
    and only rank 0 writes; the other ranks return an empty dict. ``summarise=False`` trains the folds only
    (a process of :func:`train_on_devices`).
    """
    cfg.crops.check()
    cfg.train.check()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    d = dist_context(resolve_device(cfg.train.device))
    exp_dir = output_dir / cfg.experiment
    folds = load_folds(output_dir, cfg.folds.n_folds)
    n_folds = int(folds.fold.nunique())
    if d.main:
        _check_same_config(cfg, exp_dir)
        config_mod.save(cfg, exp_dir / CONFIG_YAML)
        table, crop_dirs = experiment_table(cfg, data_dir, output_dir, folds)
    barrier(d)
    if not d.main:
        table, crop_dirs = experiment_table(cfg, data_dir, output_dir, folds)
    arrays = {ANNOTATED: load_array(crop_dirs[0])}
    if len(crop_dirs) > 1:
        arrays[LOCALIZED] = load_array(crop_dirs[1])
    # What a finished fold was trained from: a fold trained from other crops or folds is trained again.
    inputs = {"config": comparable_settings(cfg), "folds": file_state(output_dir / folds_csv(cfg.folds.n_folds)),
              "crops": [file_state(stamp_path(c / INDEX_CSV)) for c in crop_dirs]}
    selected = selected_folds(cfg, n_folds)
    log.info("experiment %s: %s task, %d crops, folds %s%s", cfg.experiment, cfg.train.task, len(table), selected,
             f", {d.world} processes" if d.world > 1 else "")
    fold_metrics = []
    t0 = time.perf_counter()
    for fold in selected:
        out = fold_dir(exp_dir, fold)
        done = out / METRICS_JSON
        last = out / LAST_PT
        if d.main and (is_stale(done, inputs) or (last.is_file() and not is_current(last, inputs))):
            log.info("fold %d was trained or started from other crops, folds or settings: training it again", fold)
            shutil.rmtree(out)
        barrier(d)
        if done.is_file() and (out / VAL_PREDS_CSV).is_file():
            log.info("fold %d already trained; kept", fold)
            fold_metrics.append(json.loads(done.read_text()))
            continue
        if d.main:   # what the fold is trained from: an interrupted fold resumes only from the same inputs
            write_stamp(last, inputs)
        fold_metrics.append(train_fold(cfg, table, arrays, fold, out, d))
        if d.main:
            write_stamp(done, inputs)
        barrier(d)
    if not (d.main and summarise):
        return {}
    preds = pd.concat([pd.read_csv(fold_dir(exp_dir, f) / VAL_PREDS_CSV) for f in selected], ignore_index=True)
    summary: dict[str, Any] = {"experiment": cfg.experiment, "task": cfg.train.task, "folds": selected,
                               "train_seconds": sum(m["train_seconds"] for m in fold_metrics),
                               "wall_seconds_this_run": time.perf_counter() - t0,
                               "params": fold_metrics[0]["params"], "fold_metrics": fold_metrics}
    train = load_train_labels(data_dir)
    prior = prior_probabilities(train)
    save_prior(exp_dir, prior)
    if cfg.train.task == "competition":
        studies = set(folds[folds.fold.isin(selected)].study_id)
        oof, n_prior = assemble_oof(preds, train, folds, studies)
        write_csv(oof, exp_dir / OOF_CSV)
        solution = solution_from_labels(train[train.study_id.isin(studies)])
        summary["oof_score"] = score(solution, oof)
        summary["prior_score"] = score(solution, fill_out_of_fold(oof.row_id.tolist(), None, train, folds))
        summary["rows_from_prior"] = n_prior
        log.info("%d labeled OOF rows had no crop and got the prior of the other folds", n_prior)
        log.info("OOF score %.4f (prior %.4f)", summary["oof_score"]["score"], summary["prior_score"]["score"])
        chosen_on_fold = [fold_dir(exp_dir, f) / FOLD_SELECTED_PREDS_CSV for f in selected]
        if cfg.train.val_share > 0 and all(p.is_file() for p in chosen_on_fold):
            optimistic, _ = assemble_oof(pd.concat([pd.read_csv(p) for p in chosen_on_fold], ignore_index=True),
                                         train, folds, studies)
            write_csv(optimistic, exp_dir / FOLD_SELECTED_OOF_CSV)
            summary["oof_score_fold_selected"] = score(solution, optimistic)
            log.info("OOF score %.4f had each held-out fold chosen its own checkpoint (optimistic)",
                     summary["oof_score_fold_selected"]["score"])
    else:
        write_csv(preds, exp_dir / PAPER_OOF_CSV)
        summary["paper_metrics"] = paper_summary(preds)
        o = summary["paper_metrics"]["overall"]
        log.info("paper task: accuracy %.3f  F1 %.3f  AUC %.3f", o["accuracy"], o["f1"], o["auc"])
    write_json(exp_dir / METRICS_JSON, summary)
    return summary


def selected_folds(cfg: ExperimentConfig, n_folds: int) -> list[int]:
    """The folds an experiment trains: folds.train_folds, fold 0 alone for the paper's holdout split, or all."""
    selected = [0] if cfg.train.split == "holdout" else cfg.folds.train_folds
    selected = list(range(n_folds)) if selected is None else list(selected)
    bad = [f for f in selected if f not in range(n_folds)]
    if bad:
        raise ConfigError(f"config key 'folds.train_folds': fold {bad[0]} does not exist (folds 0..{n_folds - 1})")
    return selected


def train_on_devices(cfg: ExperimentConfig, data_dir: str | Path, output_dir: str | Path,
                     devices: list[str]) -> dict[str, Any]:
    """Train the folds concurrently, one process per device (``["cuda:0", "cuda:1"]``; "cpu" works too),
    fold k on device k mod n, each process writing only its folds; then the OOF and scores as usual."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    folds = load_folds(output_dir, cfg.folds.n_folds)
    selected = selected_folds(cfg, int(folds.fold.nunique()))
    _check_same_config(cfg, output_dir / cfg.experiment)
    experiment_table(cfg, data_dir, output_dir, folds)   # cut any crops it needs once, before the processes
    jobs = []
    level = logging.getLogger("lsdc").getEffectiveLevel()
    for i, device in enumerate(devices):
        mine = selected[i::len(devices)]
        if mine:
            jobs.append((dataclasses.replace(cfg, folds=dataclasses.replace(cfg.folds, train_folds=mine),
                                             train=dataclasses.replace(cfg.train, device=device)),
                         data_dir, output_dir, level))
    log.info("training folds %s on %s", [j[0].folds.train_folds for j in jobs], devices[:len(jobs)])
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
        list(pool.map(_train_folds, jobs))
    return train_experiment(cfg, data_dir, output_dir)


def _train_folds(job: tuple[ExperimentConfig, Path, Path, int]) -> None:
    """One process of :func:`train_on_devices`: its folds on its device, logging to stderr tagged with it."""
    cfg, data_dir, output_dir, level = job
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(f"[{cfg.train.device}] %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[console], force=True)
    if cfg.train.device == "cpu":
        torch.set_num_threads(1)
    train_experiment(cfg, data_dir, output_dir, summarise=False)


def comparable_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The settings that make an experiment what it is (not workers, device, sync_bn, epochs, patience, which
    folds)."""
    d = config_mod.to_dict(cfg)
    for key in ("workers", "device", "epochs", "patience", "sync_bn"):
        d["train"].pop(key, None)
    for key, default in PAPER_RECIPE.items():   # the recipe keys came later: at these values, as trained before
        if d["train"].get(key) == default:
            d["train"].pop(key)
    if cfg.train.schedule == "constant":
        d["train"].pop("warmup_epochs", None)
    d["folds"].pop("train_folds", None)
    d["crops"].pop("workers", None)
    d.pop("log", None)
    return d


def _check_same_config(cfg: ExperimentConfig, exp_dir: Path) -> None:
    """Resuming into a folder trained with other settings would mix two experiments: refuse."""
    path = exp_dir / CONFIG_YAML
    if not path.is_file():
        return
    a, b = comparable_settings(config_mod.load(ExperimentConfig, path)), comparable_settings(cfg)
    if a != b:
        diff = [f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s] if a[s][k] != b.get(s, {}).get(k)]
        raise ConfigError(f"{exp_dir} holds an experiment with other settings ({', '.join(diff[:4]) or 'name'}); "
                          f"set another name (--set tag=...) or remove the folder")
