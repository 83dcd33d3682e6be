"""K-fold training on ROI crops, out-of-fold predictions and their scores.

One network serves all five conditions: it outputs ``5 x K`` logits and the crop's condition picks its
``K`` (K = 3 severities for the ``competition`` task, 2 for the paper's binary task). Each fold keeps its
best checkpoint (weights + everything needed to use them), an epoch log, metrics and wall time, and
resumes from its last checkpoint after an interruption.

Batches are gathered from each crop folder's ``crops.npy`` (uint8, memory-mapped) and augmented where
they are trained (lsdc.augment: on the GPU when there is one). Several GPUs: ``train_on_devices`` trains
the folds concurrently, one process per device; under ``torchrun`` one fold trains with
DistributedDataParallel (each process its share of every epoch; only rank 0 writes).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lsdc import config as config_mod
from lsdc import schema
from lsdc.augment import BatchAugment, to_device
from lsdc.crops import INDEX_CSV, load_array, prepare
from lsdc.data import load_train_labels
from lsdc.errors import ConfigError, DataError, TrainingDiverged
from lsdc.experiment import (
    BEST_PT,
    COND_INDEX,
    CONFIG_YAML,
    EPOCHS_CSV,
    FOLD_SELECTED_OOF_CSV,
    FOLD_SELECTED_PREDS_CSV,
    LAST_PT,
    METRICS_JSON,
    OOF_CSV,
    PAPER_OOF_CSV,
    PAPER_RECIPE,
    VAL_PREDS_CSV,
    ExperimentConfig,
    autocast,
    fill_out_of_fold,
    fold_dir,
    load_checkpoint,
    prior_probabilities,
    resolve_device,
    save_checkpoint,
    save_prior,
    select_logits,
    standardise,
)
from lsdc.folds import folds_csv, load_folds
from lsdc.io import write_csv, write_json
from lsdc.localize import OOF_POINTS_CSV, find_localizer
from lsdc.losses import metric_loss, weighted_ce
from lsdc.metric import score, solution_from_labels
from lsdc.models import count_parameters, create_model
from lsdc.paper import PAPER_CLASSES, paper_summary, paper_targets
from lsdc.schedule import lr_factor
from lsdc.sides import mirror_sides
from lsdc.stamps import file_state, is_current, is_stale, stamp_path, write_stamp

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
    index["row"] = np.arange(len(index))          # the crop's row in crops.npy
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


class CropBatches:
    """Batches of a table's crops gathered from the crop arrays: uint8 (B, H, W, C), conditions, targets.

    ``shuffle``: a new order every epoch from a generator seeded by (seed, epoch), so a resumed run sees the
    epochs an uninterrupted one would. ``shard`` (rank, world): each process of a distributed run keeps every
    world-th crop of that order, the order padded with its first crops to a multiple of ``world`` so that
    every process takes the same number of steps (one more step on one rank would wait forever on an
    all-reduce the others never join). Shuffled (training) batches never end with a batch of one crop:
    batch norm cannot train on a single sample, so that crop waits for the next epoch's order.
    ``by_study``: a shuffled order keeps each study's crops together (studies in random order, its crops
    shuffled among themselves), so a batch holds whole studies, as the metric-shaped loss wants them (in a
    distributed run each process still takes every world-th crop: it sees parts of its batch's studies).
    Batches are (crops, conditions, targets, study ids); with ``mirror`` (``train.side_agnostic``) every right
    foramen or recess crop comes mirrored onto the left with the left condition (:func:`lsdc.sides.mirror_sides`).
    """

    def __init__(self, table: pd.DataFrame, arrays: dict[str, np.ndarray], batch_size: int, shuffle: bool,
                 seed: int = 0, shard: tuple[int, int] = (0, 1), by_study: bool = False, mirror: bool = False) -> None:
        self.arrays, self.batch_size, self.shuffle, self.seed, self.shard = arrays, batch_size, shuffle, seed, shard
        self.by_study, self.mirror = by_study, mirror
        self.study = table.study_id.to_numpy()
        self.source = table.source.to_numpy()
        self.row = table.row.to_numpy()
        self.cond = table.cond.to_numpy()
        self.target = table.target.to_numpy()
        self.epoch = 0

    def _per_process(self) -> int:
        """Crops this process takes per epoch (the trailing single crop of a shuffled order left out)."""
        n = -(-len(self.row) // self.shard[1])
        if self.shuffle and n > 1 and n % self.batch_size == 1:
            n -= 1
        return n

    def __len__(self) -> int:
        return -(-self._per_process() // self.batch_size)

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """uint8 crops (len(idx), H, W, C) of the given table rows, in that order."""
        first = next(iter(self.arrays.values()))
        out = np.empty((len(idx), *first.shape[1:]), np.uint8)
        for source, array in self.arrays.items():
            mine = np.flatnonzero(self.source[idx] == source)
            if len(mine):
                rows = self.row[idx[mine]]
                order = np.argsort(rows)                       # ascending reads of the memory map
                out[mine[order]] = array[rows[order]]
        return out

    def _order(self) -> np.ndarray:
        n = len(self.row)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if self.by_study:
            _, of = np.unique(self.study, return_inverse=True)
            rank = rng.permutation(of.max() + 1)[of]
            order = order[np.argsort(rank[order], kind="stable")]
        return order

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        n = len(self.row)
        order = self._order()
        world = self.shard[1]
        if world > 1:
            order = np.resize(order, -(-n // world) * world)   # padded with its own first items
        order = order[self.shard[0]::world][:self._per_process()]
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            crops, cond = self.gather(idx), self.cond[idx]
            if self.mirror:
                crops, cond = mirror_sides(crops, cond)
            yield crops, cond, self.target[idx], self.study[idx]


def channel_stats(batches: CropBatches, max_items: int = 512, seed: int = 0) -> tuple[list, list]:
    """Per-channel mean and std of (a sample of) the training crops, in [0, 1] units."""
    rng = np.random.default_rng(seed)
    n = len(batches.row)
    pick = np.arange(n) if n <= max_items else rng.choice(n, max_items, replace=False)
    arr = batches.gather(np.sort(pick)).astype(np.float32) / 255.0
    mean = arr.mean(axis=(0, 1, 2))
    std = arr.std(axis=(0, 1, 2)) + 1e-6
    return mean.tolist(), std.tolist()


# ----------------------------------------------------------------------------- distributed training


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_context(device: torch.device) -> Dist:
    """Join the process group ``torchrun`` describes in the environment (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(dist.get_rank(), dist.get_world_size())


def _barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


RANK_GAP_TOL = 1e-6   # checksum spread allowed between ranks; unaveraged gradients drift far beyond it at once


def rank_gap(d: Dist, model: nn.Module) -> float:
    """How far the ranks' parameters are apart: the spread over ranks of a checksum of every parameter (the
    sum of their absolute values). Zero when DistributedDataParallel keeps them in step (every rank applies
    the same averaged gradients); anything more means the gradients were not averaged."""
    if d.world == 1:
        return 0.0
    total = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
    with torch.no_grad():
        for p in model.parameters():
            total[0] += p.detach().double().abs().sum()
    total[1] = -total[0]
    dist.all_reduce(total, op=dist.ReduceOp.MAX)     # (max, -min) of the checksum over ranks
    return float(total[0] + total[1])


def _from_main(d: Dist, value: Any) -> Any:
    """Rank 0's value on every rank (the decisions of a distributed run must be the same everywhere)."""
    if d.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- model step


def device_batches(batches: CropBatches, augment: BatchAugment | None,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]]:
    """Training batches as float (B, C, H, W) in [0, 255] on ``device``, augmented if asked, with their
    conditions (after left-right flips), targets and study ids."""
    for x, cond, y, study in batches:
        if augment is not None:
            xt, cond = augment(x, cond, device)
        else:
            xt = to_device(x, device)
        yield xt, cond, y, study


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` produced in a background thread, up to ``depth`` ahead: the next batch is gathered from the
    memory map and warped while the model steps on this one (NumPy, OpenCV and torch release the GIL).
    The order is unchanged; the thread has finished when the loop ends, so what it draws from a seeded
    generator is exactly what a plain loop would draw."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))
            return
        put(done)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()


@torch.no_grad()
def predict_batches(model: nn.Module, batches: CropBatches, k: int, device: torch.device, mean: torch.Tensor,
                    std: torch.Tensor, channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities (N, K) of each crop's condition, in float32 like every prediction at test
    time (lsdc.inference): out-of-fold numbers are those of the same model on the same crop there."""
    model.eval()
    out = []
    for x, cond, _, _ in batches:
        x = standardise(to_device(x, device), mean, std)
        if channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        out.append(torch.softmax(select_logits(logits.float(), torch.as_tensor(cond, device=device), k), dim=1)
                   .cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)


# ----------------------------------------------------------------------------- one fold


def sync_batchnorm(model: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
    """Batch norm layers as SyncBatchNorm when asked and possible (CUDA only: gloo cannot), for a
    distributed run whose per-process batches are small."""
    if not enabled:
        return model
    if device.type != "cuda":
        log.info("train.sync_bn: SyncBatchNorm needs CUDA; batch norm statistics stay per process on %s", device)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


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


def validation_studies(studies: np.ndarray, share: float, seed: int, fold: int) -> set[int]:
    """The share of a fold's training studies set apart to choose its epoch: drawn by study from a generator
    seeded by (seed, fold), at least one study (and one left to train on) when ``share`` > 0, none when it
    is 0; DataError when there are fewer than two training studies to split."""
    studies = np.unique(np.asarray(studies, dtype=np.int64))
    if share <= 0:
        return set()
    if len(studies) < 2:
        raise DataError(f"fold {fold}: {len(studies)} training study, too few to set validation studies apart "
                        "(train.val_share=0 chooses the epoch on the held-out fold instead, optimistically)")
    n = min(len(studies) - 1, max(1, round(share * len(studies))))
    return set(np.random.default_rng([seed, fold]).permutation(studies)[:n].tolist())


def _evaluate(model: nn.Module, batches: CropBatches, t: pd.DataFrame, k: int, device: torch.device,
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


def _write_preds(t: pd.DataFrame, probs: np.ndarray, classes: list[str], path: Path) -> None:
    preds = t[["study_id", "condition", "level", "label", "target"]].copy()
    for j, name in enumerate(classes):
        preds[name] = probs[:, j]
    write_csv(preds, path)


def train_fold(cfg: ExperimentConfig, table: pd.DataFrame, arrays: dict[str, np.ndarray], fold: int, out: Path,
               d: Dist | None = None) -> dict[str, Any]:
    """Train on all folds but ``fold``, less the validation studies that choose the epoch (``val_share``),
    predict ``fold`` with that checkpoint, write into ``out``; resumes from ``out/last.pt``.

    The held-out fold is predicted every epoch too, to draw its curve and to record the OOF it would give
    had it chosen its own checkpoint (optimistic; ``val_preds_fold_selected.csv``). In a distributed run
    every process trains its share of each batch (DistributedDataParallel) and only rank 0 writes; the
    others return an empty dict.
    """
    d = d or Dist()
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    k = cfg.n_classes
    torch.manual_seed(tcfg.seed + fold)
    # Validation, early stopping and the OOF are always on crops at annotated points (lsdc.localized_oof
    # gives the OOF at localised points): every experiment's oof.csv means the same.
    annotated = table.source == ANNOTATED
    chooser = validation_studies(table.study_id[table.fold != fold], tcfg.val_share, tcfg.seed, fold)
    in_val = table.study_id.isin(chooser)
    train_t = table[(table.fold != fold) & table.trains & ~in_val]
    fold_t = table[(table.fold == fold) & annotated]
    val_t = table[(table.fold != fold) & annotated & in_val] if chooser else fold_t
    if train_t.empty or fold_t.empty or val_t.empty:
        raise DataError(f"fold {fold}: {len(train_t)} training, {len(val_t)} validation and {len(fold_t)} "
                        "held-out crops; need all three (fewer studies or train.val_share=0)")
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
        ckpt = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        state.setdefault("best_value", state["best_loss"])              # written before train.select
        state["fold_best"].setdefault("value", state["fold_best"].pop("loss", math.inf))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"], device)
        log.info("fold %d: resuming after epoch %d", fold, state["epoch"])
    net = model
    if d.world > 1:   # after the memory format is set: DDP's buckets follow the parameters' strides
        model = sync_batchnorm(model, device, tcfg.sync_bn)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    board = summary_writer(out / "tensorboard") if cfg.log.tensorboard and d.main else None
    while state["epoch"] < tcfg.epochs and state["bad_epochs"] < tcfg.patience:
        t0 = time.perf_counter()
        net.train()
        train_b.epoch = state["epoch"]
        if augment is not None:
            augment.generator.manual_seed(tcfg.seed + 1000 * fold + state["epoch"])
        total, seen = torch.zeros((), device=device), 0   # summed on the device: no sync per step
        steps = len(train_b) if tcfg.max_steps_per_epoch is None else min(len(train_b), tcfg.max_steps_per_epoch)
        factor = 1.0
        for i, (xt, cond, y, study) in enumerate(prefetch(itertools.islice(device_batches(train_b, augment, device),
                                                                          steps))):
            factor = lr_factor(state["epoch"] * steps + i, tcfg.epochs * steps, round(tcfg.warmup_epochs * steps),
                               tcfg.schedule)
            for group in opt.param_groups:
                group["lr"] = tcfg.lr * factor
            xt = standardise(xt, mean_t, std_t)
            if tcfg.channels_last and device.type == "cuda":
                xt = xt.contiguous(memory_format=torch.channels_last)
            cond_t, y_t = torch.as_tensor(cond, device=device), torch.as_tensor(y, device=device)
            with autocast(device, tcfg.amp):
                logits = net(xt)
            chosen = select_logits(logits.float(), cond_t, k)
            if tcfg.loss == "metric":
                study_t = torch.as_tensor(np.unique(study, return_inverse=True)[1], device=device)
                loss = metric_loss(chosen, y_t, cond_t, study_t, weights)
            else:
                loss = weighted_ce(chosen, y_t, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(y)
            seen += len(y)
        _, val_loss, val_acc, val_score = _evaluate(model, val_b, val_t, k, device, mean_t, std_t, weights, cfg)
        fold_probs, fold_loss, _, fold_score = (
            _evaluate(model, fold_b, fold_t, k, device, mean_t, std_t, weights, cfg) if chooser
            else (None, val_loss, val_acc, val_score))
        state["epoch"] += 1
        state["wall"] += time.perf_counter() - t0
        gap = rank_gap(d, model)
        if gap > RANK_GAP_TOL:
            raise RuntimeError(f"fold {fold} epoch {state['epoch']}: the {d.world} processes' weights differ "
                               f"(checksum spread {gap:.3g}): the gradients were not averaged across them")
        train_loss = float(total) / max(seen, 1)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(
                f"experiment {cfg.experiment} fold {fold} epoch {state['epoch']}: training diverged (training loss "
                f"{train_loss}, validation loss {val_loss}); lower train.lr (now {tcfg.lr:g}) and train again")
        value, fold_value = (val_score, fold_score) if tcfg.select == "score" else (val_loss, fold_loss)
        if not math.isfinite(value):
            raise DataError(f"fold {fold} epoch {state['epoch']}: the validation studies' {tcfg.select} is "
                            f"{value} (a condition group without crops among them?): nothing can choose the epoch")
        if fold_probs is not None and fold_value < state["fold_best"]["value"] - 1e-6:
            state["fold_best"] = {"value": fold_value, "epoch": state["epoch"], "probs": fold_probs}
        improved = _from_main(d, value < state["best_value"] - 1e-6)
        if improved:
            state.update(best_value=value, best_loss=val_loss, best_epoch=state["epoch"], bad_epochs=0)
            if d.main:
                save_checkpoint(out / BEST_PT, {**meta, "model": model.state_dict(), "epoch": state["epoch"],
                                                "val_loss": val_loss, "val_score": val_score})
        else:
            state["bad_epochs"] += 1
        state["history"].append({"epoch": state["epoch"], "train_loss": train_loss,
                                 "val_loss": val_loss, "val_acc": val_acc, "val_score": val_score,
                                 "fold_loss": fold_loss, "fold_score": fold_score,
                                 "lr": tcfg.lr * factor, "seconds": time.perf_counter() - t0, "best": improved})
        if d.main:
            write_csv(pd.DataFrame(state["history"]), out / EPOCHS_CSV)
            if board is not None:
                for key in ("train_loss", "val_loss", "val_acc", "val_score", "fold_loss", "fold_score"):
                    board.add_scalar(key, state["history"][-1][key], state["epoch"])
                board.flush()
            save_checkpoint(last, {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                                   "rng": rng_state(device)})
            log.info("fold %d epoch %d: train %.4f  val %.4f  acc %.3f  score %.4f  held-out fold %.4f%s", fold,
                     state["epoch"], state["history"][-1]["train_loss"], val_loss, val_acc, val_score, fold_loss,
                     "  *" if improved else "")
        _barrier(d)

    if board is not None:
        board.close()
    if not d.main:
        return {}
    best_model, _ = load_checkpoint(out / BEST_PT, device)
    probs = predict_batches(best_model, fold_b, k, device, mean_t, std_t, tcfg.channels_last)
    _write_preds(fold_t, probs, meta["classes"], out / VAL_PREDS_CSV)
    if chooser:
        _write_preds(fold_t, state["fold_best"]["probs"], meta["classes"], out / FOLD_SELECTED_PREDS_CSV)
    metrics = {"fold": fold, "best_epoch": state["best_epoch"], "selected_by": tcfg.select,
               "best_val_loss": state["best_loss"], "best_val_value": state["best_value"],
               "fold_selected_epoch": state["fold_best"]["epoch"] if chooser else state["best_epoch"],
               "epochs_run": state["epoch"], "train_seconds": state["wall"], "n_train": len(train_t),
               "n_val": len(val_t), "n_val_studies": len(chooser), "n_held_out": len(fold_t),
               "params": count_parameters(best_model), "device": str(device), "processes": d.world}
    write_json(out / METRICS_JSON, metrics)
    last.unlink(missing_ok=True)
    stamp_path(last).unlink(missing_ok=True)
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
    _barrier(d)
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
        _barrier(d)
        if done.is_file() and (out / VAL_PREDS_CSV).is_file():
            log.info("fold %d already trained; kept", fold)
            fold_metrics.append(json.loads(done.read_text()))
            continue
        if d.main:   # what the fold is trained from: an interrupted fold resumes only from the same inputs
            write_stamp(last, inputs)
        fold_metrics.append(train_fold(cfg, table, arrays, fold, out, d))
        if d.main:
            write_stamp(done, inputs)
        _barrier(d)
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
