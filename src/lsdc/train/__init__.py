"""K-fold training on ROI crops, out-of-fold predictions and their scores.

One network serves all five conditions: it outputs ``5 x K`` logits and the crop's condition picks its
``K`` (K = 3 severities for the ``competition`` task, 2 for the paper's binary task). Each fold keeps its
best checkpoint (weights + everything needed to use them), an epoch log, metrics and wall time, and
resumes from its last checkpoint after an interruption.

Batches are gathered from each crop folder's ``crops.npy`` (uint8, memory-mapped) and augmented where
they are trained (lsdc.augment: on the GPU when there is one). Several GPUs: ``train_on_devices`` trains
the folds concurrently, one process per device; under ``torchrun`` one fold trains with
DistributedDataParallel (each process its share of every epoch; only rank 0 writes).

- :mod:`~lsdc.train.config`: the training recipe (``TrainConfig``) and the paper's (``PAPER_RECIPE``);
- :mod:`~lsdc.train.batches`: the crops a fold trains on, validates and holds out, and their batches;
- :mod:`~lsdc.train.distributed`: a ``torchrun`` process's rank, barriers, the ranks' weight check, SyncBatchNorm;
- :mod:`~lsdc.train.step`: batches onto the device, gathered ahead (``prefetch``), and predictions;
- :mod:`~lsdc.train.fold`: one fold (``train_fold``) and its steps: an epoch of training, the validation,
  the epoch's end (checkpoint choice, logs), the finish (the held-out fold's predictions);
- :mod:`~lsdc.train.run`: the experiment (``train_experiment``, ``train_on_devices``): every fold, then the
  out-of-fold predictions and their scores.

The names below are loaded from their module on first use: ``lsdc.experiment``'s ExperimentConfig holds a
TrainConfig (from ``lsdc.train.config``) and the training modules need ``lsdc.experiment``, so importing
this package must not import them. Patch a name in the module that looks it up (e.g.
``lsdc.train.fold.predict_batches``), not here.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "config": ("PAPER_RECIPE", "TrainConfig"),
    "batches": ("ANNOTATED", "BOTH", "LOCALIZED", "CropBatches", "channel_stats", "fold_tables", "training_table",
                "validation_studies"),
    "distributed": ("RANK_GAP_TOL", "Dist", "barrier", "dist_context", "from_main", "rank_gap", "sync_batchnorm"),
    "step": ("device_batches", "predict_batches", "prefetch"),
    "fold": ("EpochScores", "FoldTraining", "crop_score", "end_epoch", "evaluate", "finish_fold", "resume",
             "rng_state", "set_rng_state", "start_fold", "summary_writer", "train_epoch", "train_fold", "validate",
             "write_preds"),
    "run": ("assemble_oof", "comparable_settings", "experiment_table", "selected_folds", "train_experiment",
            "train_on_devices"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """The name from its module, looked up there every time (a patched module is seen through here too)."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
