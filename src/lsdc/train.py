"""K-fold training on ROI crops, out-of-fold predictions and their scores.

One network serves all five conditions: it outputs ``5 x K`` logits and the crop's condition picks its
``K`` (K = 3 severities for the ``competition`` task, 2 for the paper's binary task). Each fold keeps its
best checkpoint (weights + everything needed to use them), an epoch log, metrics and wall time, and
resumes from its last checkpoint after an interruption.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import INDEX_CSV, load_crop, prepare
from lsdc.data import load_train_labels
from lsdc.errors import ConfigError, DataError
from lsdc.experiment import (
    BEST_PT,
    COND_INDEX,
    CONFIG_YAML,
    EPOCHS_CSV,
    LAST_PT,
    METRICS_JSON,
    OOF_CSV,
    PAPER_OOF_CSV,
    VAL_PREDS_CSV,
    ExperimentConfig,
    TrainConfig,
    autocast,
    fill_with_prior,
    fold_dir,
    load_checkpoint,
    prior_probabilities,
    resolve_device,
    save_checkpoint,
    save_prior,
    select_logits,
    to_input,
)
from lsdc.folds import folds_csv, load_folds
from lsdc.io import write_csv, write_json
from lsdc.localize import OOF_POINTS_CSV, find_localizer
from lsdc.metric import score, solution_from_labels
from lsdc.models import count_parameters, create_model
from lsdc.paper import PAPER_CLASSES, paper_summary, paper_targets
from lsdc.stamps import file_state, is_stale, stamp_path, write_stamp

log = logging.getLogger(__name__)

ANNOTATED, LOCALIZED, BOTH = "annotated", "localized", "both"   # train.crops_from: where training crops are cut


# ----------------------------------------------------------------------------- data


def training_table(cfg: ExperimentConfig, crops_dir: Path, folds: pd.DataFrame, source: str = ANNOTATED
                   ) -> pd.DataFrame:
    """Crops of the task with their integer target, condition index, fold and source (where the crop was
    cut: at the annotated point, or at the point the localiser placed held out)."""
    path = crops_dir / INDEX_CSV
    if not path.is_file():
        raise DataError(f"{path} not found: run scripts/01_prepare_crops.py with the same crops settings")
    index = pd.read_csv(path, keep_default_na=False)
    index = index[index.label != ""].merge(folds, on="study_id", how="inner")
    if cfg.train.task == "competition":
        index["target"] = index.label.map(schema.SEVERITY_INDEX)
    else:
        index = paper_targets(index, cfg.train.paper_level, cfg.train.paper_moderate)
    index["cond"] = index.condition.map(COND_INDEX)
    index["path"] = [str(crops_dir / p) for p in index.path]
    index["source"] = source
    index["trains"] = True
    if index.empty:
        raise DataError(f"no labeled crops for task {cfg.train.task!r} in {path}")
    return index.reset_index(drop=True)


def lr_flip_condition(cond: int) -> int:
    """Condition index after a left-right flip of an axial crop: left <-> right subarticular."""
    info = schema.CONDITION_INFO[schema.CONDITIONS[cond]]
    if info.group != "subarticular":
        return cond
    other = "right" if info.side == "left" else "left"
    return COND_INDEX[schema.condition_for("subarticular", other)]


class CropDataset(Dataset):
    """ROI crops as (C, H, W) float tensors, standardised per channel, with paper augmentations.

    A left-right flip is applied only to axial (subarticular) crops and always swaps the left/right
    condition with it; sagittal crops are never flipped left-right (that would swap front and back).
    """

    def __init__(self, table: pd.DataFrame, n_slices: int, mean: np.ndarray, std: np.ndarray,
                 tcfg: TrainConfig | None = None, size: int = 224, seed: int = 0) -> None:
        self.paths = table.path.tolist()
        self.cond = table.cond.to_numpy()
        self.target = table.target.to_numpy()
        self.n_slices = n_slices
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.tcfg = tcfg
        self.rng = np.random.default_rng(seed)
        self.affine = None
        if tcfg is not None and tcfg.augment:
            t = int(round(tcfg.translate_px * size / 224))
            # keep_ratio: one scale for both axes, as the paper scales (albumentations 2 draws x and y apart).
            self.affine = A.Affine(scale=tuple(tcfg.scale), keep_ratio=True, translate_px={"x": (-t, t), "y": (-t, t)},
                                   rotate=(-tcfg.rotate_deg, tcfg.rotate_deg), border_mode=0, fill=0, p=1.0)
            self.affine.set_random_seed(seed)  # albumentations draws from its own generator: seed it too

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img = load_crop(self.paths[i], self.n_slices)
        cond = int(self.cond[i])
        if self.tcfg is not None and self.tcfg.augment:
            img, cond = self.augment(img, cond)
        return to_input(img[None], self.mean, self.std)[0], cond, int(self.target[i])

    def augment(self, img: np.ndarray, cond: int) -> tuple[np.ndarray, int]:
        tcfg = self.tcfg
        assert tcfg is not None
        if self.affine is not None:
            img = self.affine(image=img)["image"]
        if self.rng.random() < tcfg.vflip:
            img = img[::-1]
        if tcfg.lr_flip > 0 and schema.CONDITION_INFO[schema.CONDITIONS[cond]].group == "subarticular" \
                and self.rng.random() < tcfg.lr_flip:
            img, cond = img[:, ::-1], lr_flip_condition(cond)
        return img, cond


def channel_stats(table: pd.DataFrame, n_slices: int, max_items: int = 512, seed: int = 0) -> tuple[list, list]:
    """Per-channel mean and std of (a sample of) the training crops, in [0, 1] units."""
    rng = np.random.default_rng(seed)
    paths = table.path.to_numpy()
    pick = paths if len(paths) <= max_items else rng.choice(paths, max_items, replace=False)
    arr = np.stack([load_crop(p, n_slices) for p in pick]).astype(np.float32) / 255.0
    mean = arr.mean(axis=(0, 1, 2))
    std = arr.std(axis=(0, 1, 2)) + 1e-6
    return mean.tolist(), std.tolist()


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.rng = np.random.default_rng(info.seed % 2**32)
        if info.dataset.affine is not None:
            info.dataset.affine.set_random_seed(info.seed % 2**32)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=False, worker_init_fn=_worker_init,
                      persistent_workers=False)


# ----------------------------------------------------------------------------- model step


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged with per-class weights (sum w_i ce_i / sum w_i), as the metric does."""
    ce = nn.functional.cross_entropy(logits.float(), target, reduction="none")
    if weights is None:
        return ce.mean()
    w = weights[target]
    return (w * ce).sum() / w.sum()


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, k: int, device: torch.device,
                   channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities (N, K) of each crop's condition, in float32 like every prediction at test
    time (lsdc.inference): out-of-fold numbers are those of the same model on the same crop there."""
    model.eval()
    out = []
    for x, cond, _ in loader:
        x = x.to(device, non_blocking=True)
        if channels_last and device.type == "cuda":
            x = x.to(memory_format=torch.channels_last)
        logits = model(x)
        out.append(torch.softmax(select_logits(logits.float(), cond.to(device), k), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)


# ----------------------------------------------------------------------------- one fold


def train_fold(cfg: ExperimentConfig, table: pd.DataFrame, fold: int, out: Path) -> dict[str, Any]:
    """Train on all folds but ``fold``, early-stop on ``fold``, write into ``out``; resumes from ``out/last.pt``."""
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    k = cfg.n_classes
    torch.manual_seed(tcfg.seed + fold)
    # Validation, early stopping and the OOF are always on crops at annotated points (lsdc.localized_oof
    # gives the OOF at localised points): every experiment's oof.csv means the same.
    train_t = table[(table.fold != fold) & table.trains]
    val_t = table[(table.fold == fold) & (table.source == ANNOTATED)]
    if train_t.empty or val_t.empty:
        raise DataError(f"fold {fold}: {len(train_t)} training and {len(val_t)} held-out crops; need both")
    mean, std = channel_stats(train_t, cfg.crops.n_slices, seed=tcfg.seed)
    model = create_model(cfg.network_config()).to(device)
    if tcfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt_cls = torch.optim.Adam if tcfg.optimizer == "adam" else torch.optim.AdamW
    opt = opt_cls(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    weights = torch.tensor(tcfg.class_weights[:k] if tcfg.task == "competition" else (1.0, 1.0), device=device)
    train_ds = CropDataset(train_t, cfg.crops.n_slices, mean, std, tcfg, cfg.crops.size, seed=tcfg.seed + fold)
    val_ds = CropDataset(val_t, cfg.crops.n_slices, mean, std, None)
    train_dl = make_loader(train_ds, tcfg.batch_size, True, tcfg.workers, device)
    val_dl = make_loader(val_ds, tcfg.batch_size * 2, False, tcfg.workers, device)

    meta = {"config": config_mod.to_dict(cfg), "classes": list(schema.SEVERITY_COLUMNS if k == 3 else PAPER_CLASSES),
            "conditions": list(schema.CONDITIONS), "mean": mean, "std": std, "fold": fold}
    state = {"epoch": 0, "best_loss": math.inf, "best_epoch": -1, "bad_epochs": 0, "wall": 0.0, "history": []}
    last = out / LAST_PT
    if last.is_file():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        log.info("fold %d: resuming after epoch %d", fold, state["epoch"])

    while state["epoch"] < tcfg.epochs and state["bad_epochs"] < tcfg.patience:
        t0 = time.perf_counter()
        model.train()
        losses, seen = [], 0
        for step, (x, cond, y) in enumerate(train_dl):
            if tcfg.max_steps_per_epoch is not None and step >= tcfg.max_steps_per_epoch:
                break
            x, cond, y = x.to(device, non_blocking=True), cond.to(device), y.to(device)
            if tcfg.channels_last and device.type == "cuda":
                x = x.to(memory_format=torch.channels_last)
            with autocast(device, tcfg.amp):
                logits = model(x)
            loss = weighted_ce(select_logits(logits.float(), cond, k), y, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()) * len(y))
            seen += len(y)
        probs = predict_loader(model, val_dl, k, device, tcfg.channels_last)
        val_loss = float(weighted_ce(torch.log(torch.from_numpy(probs).clamp_min(1e-15)),
                                     torch.as_tensor(val_t.target.to_numpy().copy()),
                                     weights.cpu()))
        val_acc = float((probs.argmax(1) == val_t.target.to_numpy()).mean())
        state["epoch"] += 1
        state["wall"] += time.perf_counter() - t0
        improved = val_loss < state["best_loss"] - 1e-6
        if improved:
            state.update(best_loss=val_loss, best_epoch=state["epoch"], bad_epochs=0)
            save_checkpoint(out / BEST_PT, {**meta, "model": model.state_dict(), "epoch": state["epoch"],
                                            "val_loss": val_loss})
        else:
            state["bad_epochs"] += 1
        state["history"].append({"epoch": state["epoch"], "train_loss": sum(losses) / max(seen, 1),
                                 "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - t0,
                                 "best": improved})
        write_csv(pd.DataFrame(state["history"]), out / EPOCHS_CSV)
        save_checkpoint(last, {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state})
        log.info("fold %d epoch %d: train %.4f  val %.4f  acc %.3f%s", fold, state["epoch"],
                 state["history"][-1]["train_loss"], val_loss, val_acc, "  *" if improved else "")

    best_model, _ = load_checkpoint(out / BEST_PT, device)
    probs = predict_loader(best_model, val_dl, k, device, tcfg.channels_last)
    preds = val_t[["study_id", "condition", "level", "label", "target"]].copy()
    for j, name in enumerate(meta["classes"]):
        preds[name] = probs[:, j]
    write_csv(preds, out / VAL_PREDS_CSV)
    metrics = {"fold": fold, "best_epoch": state["best_epoch"], "best_val_loss": state["best_loss"],
               "epochs_run": state["epoch"], "train_seconds": state["wall"], "n_train": len(train_t),
               "n_val": len(val_t), "params": count_parameters(best_model), "device": str(device)}
    write_json(out / METRICS_JSON, metrics)
    last.unlink(missing_ok=True)
    return metrics


# ----------------------------------------------------------------------------- the experiment


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


def assemble_oof(preds: pd.DataFrame, train: pd.DataFrame, studies: set[int]) -> tuple[pd.DataFrame, int]:
    """Submission-format OOF: all 25 rows of every study in ``studies``.

    Crops predicted out of fold give their probabilities; every other row gets the training prior.
    Returns the frame and the number of labeled rows that fell back to the prior.
    """
    row_ids = [r for s in sorted(studies) for r in schema.study_row_ids(s)]
    rid = [schema.row_id(s, c, lv) for s, c, lv in zip(preds.study_id, preds.condition, preds.level)]
    have = preds.assign(row_id=rid)[["row_id", *schema.SEVERITY_COLUMNS]]
    have = have[have.row_id.isin(set(row_ids))]
    oof = fill_with_prior(row_ids, have, prior_probabilities(train))
    labeled = set(solution_from_labels(train[train.study_id.isin(studies)]).row_id)
    return oof, len(labeled - set(have.row_id))


def train_experiment(cfg: ExperimentConfig, data_dir: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Train every selected fold, then write the out-of-fold predictions and their scores."""
    cfg.crops.check()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    exp_dir = output_dir / cfg.experiment
    _check_same_config(cfg, exp_dir)
    config_mod.save(cfg, exp_dir / CONFIG_YAML)
    folds = load_folds(output_dir, cfg.folds.n_folds)
    n_folds = int(folds.fold.nunique())
    table, crop_dirs = experiment_table(cfg, data_dir, output_dir, folds)
    # What a finished fold was trained from: a fold trained from other crops or folds is trained again.
    inputs = {"config": _comparable(cfg), "folds": file_state(output_dir / folds_csv(cfg.folds.n_folds)),
              "crops": [file_state(stamp_path(d / INDEX_CSV)) for d in crop_dirs]}
    selected = cfg.folds.train_folds
    if cfg.train.split == "holdout":
        selected = [0]
    selected = list(range(n_folds)) if selected is None else list(selected)
    bad = [f for f in selected if f not in range(n_folds)]
    if bad:
        raise ConfigError(f"config key 'folds.train_folds': fold {bad[0]} does not exist (folds 0..{n_folds - 1})")
    log.info("experiment %s: %s task, %d crops, folds %s", cfg.experiment, cfg.train.task, len(table), selected)
    fold_metrics = []
    t0 = time.perf_counter()
    for fold in selected:
        out = fold_dir(exp_dir, fold)
        done = out / METRICS_JSON
        if is_stale(done, inputs):
            log.info("fold %d was trained from other crops or folds: training it again", fold)
            shutil.rmtree(out)
        if done.is_file() and (out / VAL_PREDS_CSV).is_file():
            log.info("fold %d already trained; kept", fold)
            fold_metrics.append(json.loads(done.read_text()))
            continue
        fold_metrics.append(train_fold(cfg, table, fold, out))
        write_stamp(done, inputs)
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
        oof, n_prior = assemble_oof(preds, train, studies)
        write_csv(oof, exp_dir / OOF_CSV)
        solution = solution_from_labels(train[train.study_id.isin(studies)])
        summary["oof_score"] = score(solution, oof)
        summary["prior_score"] = score(solution, fill_with_prior(oof.row_id.tolist(), None, prior))
        summary["rows_from_prior"] = n_prior
        log.info("%d labeled OOF rows had no crop and got the training prior", n_prior)
        log.info("OOF score %.4f (prior %.4f)", summary["oof_score"]["score"], summary["prior_score"]["score"])
    else:
        write_csv(preds, exp_dir / PAPER_OOF_CSV)
        summary["paper_metrics"] = paper_summary(preds)
        o = summary["paper_metrics"]["overall"]
        log.info("paper task: accuracy %.3f  F1 %.3f  AUC %.3f", o["accuracy"], o["f1"], o["auc"])
    write_json(exp_dir / METRICS_JSON, summary)
    return summary


def _comparable(cfg: ExperimentConfig) -> dict[str, Any]:
    """The settings that make an experiment what it is (not workers, device, epochs, patience, which folds)."""
    d = config_mod.to_dict(cfg)
    for key in ("workers", "device", "epochs", "patience"):
        d["train"].pop(key, None)
    d["folds"].pop("train_folds", None)
    d["crops"].pop("workers", None)
    return d


def _check_same_config(cfg: ExperimentConfig, exp_dir: Path) -> None:
    """Resuming into a folder trained with other settings would mix two experiments: refuse."""
    path = exp_dir / CONFIG_YAML
    if not path.is_file():
        return
    a, b = _comparable(config_mod.load(ExperimentConfig, path)), _comparable(cfg)
    if a != b:
        diff = [f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s] if a[s][k] != b.get(s, {}).get(k)]
        raise ConfigError(f"{exp_dir} holds an experiment with other settings ({', '.join(diff[:4]) or 'name'}); "
                          f"set another name (--set tag=...) or remove the folder")
