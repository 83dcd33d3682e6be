"""One fold: train on all folds but one, choose the epoch on the validation studies, predict the held-out fold.

:func:`train_fold` sets the fold up (:func:`start_fold`), then runs its epochs, each one epoch of training
(:func:`train_epoch`), the validation step (:func:`validate`) and the epoch's end (:func:`end_epoch`: the
checks, the checkpoint the validation studies choose, the epoch log and last.pt), and finishes with the
held-out fold's predictions by the chosen checkpoint (:func:`finish_fold`).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lsdc import config as config_mod
from lsdc import schema
from lsdc.augment import BatchAugment
from lsdc.errors import ConfigError, DataError, TrainingDiverged
from lsdc.experiment import (
    BEST_PT,
    EPOCHS_CSV,
    FOLD_SELECTED_PREDS_CSV,
    LAST_PT,
    METRICS_JSON,
    VAL_PREDS_CSV,
    ExperimentConfig,
    autocast,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    select_logits,
    standardise,
)
from lsdc.io import write_csv, write_json
from lsdc.losses import metric_loss, weighted_ce
from lsdc.metric import score
from lsdc.models import count_parameters, create_model
from lsdc.paper import PAPER_CLASSES
from lsdc.schedule import lr_factor
from lsdc.stamps import stamp_path
from lsdc.train.batches import CropBatches, channel_stats, fold_tables
from lsdc.train.distributed import RANK_GAP_TOL, Dist, barrier, from_main, rank_gap, sync_batchnorm
from lsdc.train.step import device_batches, predict_batches, prefetch

log = logging.getLogger(__package__)   # the package's logger: log lines name lsdc.train, as before the split


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random state the next epoch starts from (dropout, slot sampling; the batch order and the
    augmentation are seeded per epoch): saved in last.pt, so a resumed fold trains as an uninterrupted one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def summary_writer(folder: Path) -> Any:
    """TensorBoard's SummaryWriter (log.tensorboard=true); tensorboard is an optional install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("log.tensorboard=true needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter(str(folder))


def crop_score(table: pd.DataFrame, probs: np.ndarray) -> float:
    """The official metric over the rows that have a crop (study, condition, level, target): the score an
    epoch's validation predictions earn before unlabeled cells and crop-less rows are filled with the prior.
    NaN when a group has no row (a tiny fold)."""
    rid = [schema.row_id(s, c, lv) for s, c, lv in zip(table.study_id, table.condition, table.level)]
    onehot = np.eye(len(schema.SEVERITY_COLUMNS))[table.target.to_numpy()]
    solution = pd.DataFrame({"row_id": rid, **dict(zip(schema.SEVERITY_COLUMNS, onehot.T)),
                             "sample_weight": np.asarray(schema.SEVERITY_WEIGHTS)[table.target.to_numpy()]})
    submission = pd.DataFrame({"row_id": rid, **dict(zip(schema.SEVERITY_COLUMNS, probs.T))})
    try:
        return score(solution, submission)["score"]
    except DataError:
        return math.nan


def evaluate(model: nn.Module, batches: CropBatches, t: pd.DataFrame, k: int, device: torch.device,
             mean: torch.Tensor, std: torch.Tensor, weights: torch.Tensor, cfg: ExperimentConfig
             ) -> tuple[np.ndarray, float, float, float]:
    """Predictions of a table's crops and their weighted loss, accuracy and official score (NaN for the
    paper task)."""
    probs = predict_batches(model, batches, k, device, mean, std, cfg.train.channels_last)
    target = t.target.to_numpy()
    loss = float(weighted_ce(torch.log(torch.from_numpy(probs).clamp_min(1e-15)), torch.as_tensor(target.copy()),
                             weights.cpu()))
    acc = float((probs.argmax(1) == target).mean())
    score_ = crop_score(t, probs) if cfg.train.task == "competition" else math.nan
    return probs, loss, acc, score_


def write_preds(t: pd.DataFrame, probs: np.ndarray, classes: list[str], path: Path) -> None:
    preds = t[["study_id", "condition", "level", "label", "target"]].copy()
    for j, name in enumerate(classes):
        preds[name] = probs[:, j]
    write_csv(preds, path)


@dataclass
class FoldTraining:
    """One fold in training: what :func:`start_fold` sets up and the steps of :func:`train_fold` share.
    ``state`` is what changes from epoch to epoch, saved in last.pt for a resumed fold to go on from."""

    cfg: ExperimentConfig
    fold: int
    out: Path
    d: Dist
    device: torch.device
    chooser: set[int]             # the validation studies (none: the held-out fold chooses the epoch)
    train_t: pd.DataFrame         # the crops trained on, the validation studies' and the held-out fold's
    val_t: pd.DataFrame
    fold_t: pd.DataFrame
    train_b: CropBatches
    val_b: CropBatches
    fold_b: CropBatches
    mean_t: torch.Tensor          # the training crops' channel statistics, on the device
    std_t: torch.Tensor
    model: nn.Module
    net: nn.Module                # the model, or its DistributedDataParallel in a distributed run
    opt: torch.optim.Optimizer
    weights: torch.Tensor         # the class weights of the loss
    augment: BatchAugment | None
    meta: dict[str, Any]          # what best.pt holds beside the weights
    state: dict[str, Any]
    board: Any                    # TensorBoard's SummaryWriter, or None

    @property
    def k(self) -> int:
        return self.cfg.n_classes


@dataclass
class EpochScores:
    """An epoch's validation: the validation studies' loss, accuracy and score (they choose the epoch) and the
    held-out fold's (its curve, and the checkpoint it would choose itself; the same numbers, and no
    predictions kept, when the held-out fold is the validation set)."""

    val_loss: float
    val_acc: float
    val_score: float
    fold_probs: np.ndarray | None
    fold_loss: float
    fold_score: float


def start_fold(cfg: ExperimentConfig, table: pd.DataFrame, arrays: dict[str, np.ndarray], fold: int, out: Path,
               d: Dist) -> FoldTraining:
    """Everything fold ``fold`` trains with: seeded first, its tables and batches, the normalisation
    statistics, the model, optimiser and augmentation (in this order: the random state follows it), then
    the state of ``out/last.pt`` when the fold resumes, DistributedDataParallel in a distributed run, and
    the TensorBoard writer when asked."""
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    k = cfg.n_classes
    torch.manual_seed(tcfg.seed + fold)
    chooser, train_t, val_t, fold_t = fold_tables(table, fold, tcfg)
    per_process = max(1, tcfg.batch_size // d.world)   # the global batch stays train.batch_size
    train_b = CropBatches(train_t, arrays, per_process, True, seed=tcfg.seed + fold, shard=(d.rank, d.world),
                          by_study=tcfg.loss == "metric", mirror=tcfg.side_agnostic)
    val_b = CropBatches(val_t, arrays, tcfg.batch_size * 2, False, mirror=tcfg.side_agnostic)
    fold_b = CropBatches(fold_t, arrays, tcfg.batch_size * 2, False, mirror=tcfg.side_agnostic) if chooser else val_b
    mean, std = channel_stats(train_b, seed=tcfg.seed)
    mean_t, std_t = (torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    model = create_model(cfg.network_config()).to(device)
    if tcfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt_cls = torch.optim.Adam if tcfg.optimizer == "adam" else torch.optim.AdamW
    opt = opt_cls(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    weights = torch.tensor(tcfg.class_weights[:k] if tcfg.task == "competition" else (1.0, 1.0), device=device)
    augment = BatchAugment(tcfg, cfg.crops.size, tcfg.seed + fold, threads=tcfg.workers) if tcfg.augment else None

    meta = {"config": config_mod.to_dict(cfg), "classes": list(schema.SEVERITY_COLUMNS if k == 3 else PAPER_CLASSES),
            "conditions": list(schema.CONDITIONS), "mean": mean, "std": std, "fold": fold}
    # best_value / fold_best["value"]: the validation studies' / held-out fold's train.select criterion.
    state = {"epoch": 0, "best_value": math.inf, "best_loss": math.inf, "best_epoch": -1, "bad_epochs": 0,
             "wall": 0.0, "history": [], "fold_best": {"value": math.inf, "epoch": -1, "probs": None}}
    last = out / LAST_PT
    if last.is_file():
        state = resume(last, model, opt, device)
        log.info("fold %d: resuming after epoch %d", fold, state["epoch"])
    net = model
    if d.world > 1:   # after the memory format is set: DDP's buckets follow the parameters' strides
        model = sync_batchnorm(model, device, tcfg.sync_bn)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    board = summary_writer(out / "tensorboard") if cfg.log.tensorboard and d.main else None
    return FoldTraining(cfg, fold, out, d, device, chooser, train_t, val_t, fold_t, train_b, val_b, fold_b,
                        mean_t, std_t, model, net, opt, weights, augment, meta, state, board)


def resume(last: Path, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> dict[str, Any]:
    """The weights, optimiser and random state of an interrupted fold from its last.pt; returns its state."""
    ckpt = torch.load(last, map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    state = ckpt["state"]
    state.setdefault("best_value", state["best_loss"])              # written before train.select
    state["fold_best"].setdefault("value", state["fold_best"].pop("loss", math.inf))
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"], device)
    return state


def train_epoch(f: FoldTraining) -> tuple[float, float]:
    """One epoch of training (at most train.max_steps_per_epoch steps), the learning rate set every step by
    the schedule; returns the mean training loss and the last step's learning rate."""
    tcfg, state, device = f.cfg.train, f.state, f.device
    f.net.train()
    f.train_b.epoch = state["epoch"]
    if f.augment is not None:
        f.augment.generator.manual_seed(tcfg.seed + 1000 * f.fold + state["epoch"])
    total, seen = torch.zeros((), device=device), 0   # summed on the device: no sync per step
    steps = len(f.train_b) if tcfg.max_steps_per_epoch is None else min(len(f.train_b), tcfg.max_steps_per_epoch)
    factor = 1.0
    for i, (xt, cond, y, study) in enumerate(prefetch(itertools.islice(device_batches(f.train_b, f.augment, device),
                                                                      steps))):
        factor = lr_factor(state["epoch"] * steps + i, tcfg.epochs * steps, round(tcfg.warmup_epochs * steps),
                           tcfg.schedule)
        for group in f.opt.param_groups:
            group["lr"] = tcfg.lr * factor
        xt = standardise(xt, f.mean_t, f.std_t)
        if tcfg.channels_last and device.type == "cuda":
            xt = xt.contiguous(memory_format=torch.channels_last)
        cond_t, y_t = torch.as_tensor(cond, device=device), torch.as_tensor(y, device=device)
        with autocast(device, tcfg.amp):
            logits = f.net(xt)
        chosen = select_logits(logits.float(), cond_t, f.k)
        if tcfg.loss == "metric":
            study_t = torch.as_tensor(np.unique(study, return_inverse=True)[1], device=device)
            loss = metric_loss(chosen, y_t, cond_t, study_t, f.weights)
        else:
            loss = weighted_ce(chosen, y_t, f.weights)
        f.opt.zero_grad(set_to_none=True)
        loss.backward()
        f.opt.step()
        total += loss.detach() * len(y)
        seen += len(y)
    return float(total) / max(seen, 1), tcfg.lr * factor


def validate(f: FoldTraining) -> EpochScores:
    """The validation step: the validation studies' crops predicted and scored, and the held-out fold's
    (when the validation studies are not the held-out fold itself)."""
    args = (f.k, f.device, f.mean_t, f.std_t, f.weights, f.cfg)
    _, val_loss, val_acc, val_score = evaluate(f.model, f.val_b, f.val_t, *args)
    fold_probs, fold_loss, _, fold_score = (
        evaluate(f.model, f.fold_b, f.fold_t, *args) if f.chooser else (None, val_loss, val_acc, val_score))
    return EpochScores(val_loss, val_acc, val_score, fold_probs, fold_loss, fold_score)


def end_epoch(f: FoldTraining, s: EpochScores, train_loss: float, lr: float, t0: float) -> None:
    """The end of an epoch that started at ``t0``: the checks (ranks in step, losses finite, something to
    choose by), the checkpoint the validation studies choose (best.pt) and the held-out fold's own choice,
    the epoch log (epochs.csv, TensorBoard, the log line) and last.pt; then every rank waits for rank 0."""
    tcfg, state, fold, d = f.cfg.train, f.state, f.fold, f.d
    state["epoch"] += 1
    state["wall"] += time.perf_counter() - t0
    gap = rank_gap(d, f.model)
    if gap > RANK_GAP_TOL:
        raise RuntimeError(f"fold {fold} epoch {state['epoch']}: the {d.world} processes' weights differ "
                           f"(checksum spread {gap:.3g}): the gradients were not averaged across them")
    if not (math.isfinite(train_loss) and math.isfinite(s.val_loss)):
        raise TrainingDiverged(
            f"experiment {f.cfg.experiment} fold {fold} epoch {state['epoch']}: training diverged (training loss "
            f"{train_loss}, validation loss {s.val_loss}); lower train.lr (now {tcfg.lr:g}) and train again")
    value, fold_value = (s.val_score, s.fold_score) if tcfg.select == "score" else (s.val_loss, s.fold_loss)
    if not math.isfinite(value):
        raise DataError(f"fold {fold} epoch {state['epoch']}: the validation studies' {tcfg.select} is "
                        f"{value} (a condition group without crops among them?): nothing can choose the epoch")
    if s.fold_probs is not None and fold_value < state["fold_best"]["value"] - 1e-6:
        state["fold_best"] = {"value": fold_value, "epoch": state["epoch"], "probs": s.fold_probs}
    improved = from_main(d, value < state["best_value"] - 1e-6)
    if improved:
        state.update(best_value=value, best_loss=s.val_loss, best_epoch=state["epoch"], bad_epochs=0)
        if d.main:
            save_checkpoint(f.out / BEST_PT, {**f.meta, "model": f.model.state_dict(), "epoch": state["epoch"],
                                              "val_loss": s.val_loss, "val_score": s.val_score})
    else:
        state["bad_epochs"] += 1
    state["history"].append({"epoch": state["epoch"], "train_loss": train_loss,
                             "val_loss": s.val_loss, "val_acc": s.val_acc, "val_score": s.val_score,
                             "fold_loss": s.fold_loss, "fold_score": s.fold_score,
                             "lr": lr, "seconds": time.perf_counter() - t0, "best": improved})
    if d.main:
        write_csv(pd.DataFrame(state["history"]), f.out / EPOCHS_CSV)
        if f.board is not None:
            for key in ("train_loss", "val_loss", "val_acc", "val_score", "fold_loss", "fold_score"):
                f.board.add_scalar(key, state["history"][-1][key], state["epoch"])
            f.board.flush()
        save_checkpoint(f.out / LAST_PT, {"model": f.model.state_dict(), "optimizer": f.opt.state_dict(),
                                          "state": state, "rng": rng_state(f.device)})
        log.info("fold %d epoch %d: train %.4f  val %.4f  acc %.3f  score %.4f  held-out fold %.4f%s", fold,
                 state["epoch"], state["history"][-1]["train_loss"], s.val_loss, s.val_acc, s.val_score,
                 s.fold_loss, "  *" if improved else "")
    barrier(d)


def finish_fold(f: FoldTraining) -> dict[str, Any]:
    """Rank 0's end of a fold: the held-out fold predicted by the checkpoint the validation studies chose
    (val_preds.csv) and by its own choice (val_preds_fold_selected.csv, when they differ), the fold's
    metrics.json, and last.pt removed; returns the metrics."""
    tcfg, state = f.cfg.train, f.state
    best_model, _ = load_checkpoint(f.out / BEST_PT, f.device)
    probs = predict_batches(best_model, f.fold_b, f.k, f.device, f.mean_t, f.std_t, tcfg.channels_last)
    write_preds(f.fold_t, probs, f.meta["classes"], f.out / VAL_PREDS_CSV)
    if f.chooser:
        write_preds(f.fold_t, state["fold_best"]["probs"], f.meta["classes"], f.out / FOLD_SELECTED_PREDS_CSV)
    metrics = {"fold": f.fold, "best_epoch": state["best_epoch"], "selected_by": tcfg.select,
               "best_val_loss": state["best_loss"], "best_val_value": state["best_value"],
               "fold_selected_epoch": state["fold_best"]["epoch"] if f.chooser else state["best_epoch"],
               "epochs_run": state["epoch"], "train_seconds": state["wall"], "n_train": len(f.train_t),
               "n_val": len(f.val_t), "n_val_studies": len(f.chooser), "n_held_out": len(f.fold_t),
               "params": count_parameters(best_model), "device": str(f.device), "processes": f.d.world}
    write_json(f.out / METRICS_JSON, metrics)
    last = f.out / LAST_PT
    last.unlink(missing_ok=True)
    stamp_path(last).unlink(missing_ok=True)
    return metrics


def train_fold(cfg: ExperimentConfig, table: pd.DataFrame, arrays: dict[str, np.ndarray], fold: int, out: Path,
               d: Dist | None = None) -> dict[str, Any]:
    """Train on all folds but ``fold``, less the validation studies that choose the epoch (``val_share``),
    predict ``fold`` with that checkpoint, write into ``out``; resumes from ``out/last.pt``.

    The held-out fold is predicted every epoch too, to draw its curve and to record the OOF it would give
    had it chosen its own checkpoint (optimistic; ``val_preds_fold_selected.csv``). In a distributed run
    every process trains its share of each batch (DistributedDataParallel) and only rank 0 writes; the
    others return an empty dict.
    """
    f = start_fold(cfg, table, arrays, fold, out, d or Dist())
    while f.state["epoch"] < cfg.train.epochs and f.state["bad_epochs"] < cfg.train.patience:
        t0 = time.perf_counter()
        train_loss, lr = train_epoch(f)
        scores = validate(f)
        end_epoch(f, scores, train_loss, lr, t0)
    if f.board is not None:
        f.board.close()
    return finish_fold(f) if f.d.main else {}
