"""The crops a fold trains on, validates on and holds out, and their batches: the labeled crop table
(``training_table``), batches gathered from the memory-mapped crop arrays (``CropBatches``), the
normalisation statistics (``channel_stats``), the validation studies that choose a fold's epoch
(``validation_studies``) and a fold's three tables (``fold_tables``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.crops import INDEX_CSV
from lsdc.errors import DataError
from lsdc.experiment import COND_INDEX, ExperimentConfig
from lsdc.paper import paper_targets
from lsdc.sides import mirror_sides
from lsdc.train.config import TrainConfig

ANNOTATED, LOCALIZED, BOTH = "annotated", "localized", "both"   # train.crops_from: where training crops are cut


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


def fold_tables(table: pd.DataFrame, fold: int, tcfg: TrainConfig
                ) -> tuple[set[int], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fold ``fold``'s validation studies and its three tables: the crops it trains on (all other folds, less
    the validation studies), the crops that choose its epoch (the validation studies', or the held-out
    fold's when there are none) and the held-out fold's; DataError when one is empty."""
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
    return chooser, train_t, val_t, fold_t
