"""The experiment folder's format, shared by training, inference, the ensemble and the report.

An experiment folder (``outputs/<experiment>/``) holds::

    config.yaml              the ExperimentConfig that made it
    fold<k>/best.pt          weights + config + this fold's normalisation statistics
    fold<k>/last.pt          resume state of an unfinished fold (removed when it finishes)
    fold<k>/epochs.csv       per-epoch losses and scores (validation studies, held-out fold); fold<k>/metrics.json
    fold<k>/val_preds.csv    the held-out fold's predictions by the checkpoint the validation studies chose
    oof.csv | oof_paper.csv  out-of-fold predictions (competition task: submission format)
    metrics.json             the run's summary; prior.json: the training prior per group
    oof_localized.csv        OOF from crops at held-out localiser points (lsdc.localized_oof)
    oof_fold_selected.csv    the OOF had each held-out fold chosen its own checkpoint (optimistic; for comparison)

It also holds the model output contract: one network for all five conditions outputs ``5 x K`` logits
and the crop's condition picks its ``K`` (K = 3 severities, or 2 for the paper's binary task).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import CropConfig
from lsdc.errors import ConfigError, DataError
from lsdc.io import atomic_path, write_json
from lsdc.models import ModelConfig, create_model

# The training recipe lives beside the training loop; re-exported here, where ExperimentConfig holds it.
from lsdc.train.config import PAPER_RECIPE as PAPER_RECIPE
from lsdc.train.config import TrainConfig as TrainConfig

log = logging.getLogger(__name__)

CONFIG_YAML = "config.yaml"
METRICS_JSON = "metrics.json"
PRIOR_JSON = "prior.json"
OOF_CSV = "oof.csv"
PAPER_OOF_CSV = "oof_paper.csv"
LOCALIZED_OOF_CSV = "oof_localized.csv"
BEST_PT = "best.pt"
LAST_PT = "last.pt"
EPOCHS_CSV = "epochs.csv"
VAL_PREDS_CSV = "val_preds.csv"
# The held-out fold's predictions at the epoch its own loss was lowest, and the OOF they make: what the OOF
# would be if the held-out fold chose the checkpoint (val_share=0), from the same run, to show the optimism.
FOLD_SELECTED_PREDS_CSV = "val_preds_fold_selected.csv"
FOLD_SELECTED_OOF_CSV = "oof_fold_selected.csv"
PROB_FLOOR = 1e-7   # no submitted probability is lower: one confident mistake costs at most ~16 nats

N_CONDITIONS = len(schema.CONDITIONS)
COND_INDEX: dict[str, int] = {c: i for i, c in enumerate(schema.CONDITIONS)}


# ----------------------------------------------------------------------------- configs


@dataclass
class FoldConfig:
    n_folds: int = 5
    seed: int = 42
    train_folds: list[int] | None = None   # which folds to train (None: all)


@dataclass
class LogConfig:
    tensorboard: bool = False              # also TensorBoard scalars in <fold>/tensorboard (pip install tensorboard)


@dataclass
class ExperimentConfig:
    """Everything one experiment needs; saved as config.yaml beside its outputs."""

    name: str = ""                         # experiment folder; default: model name (+ _paper) (+ _tag)
    tag: str = ""
    crops: CropConfig = field(default_factory=CropConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def experiment(self) -> str:
        if self.name:
            return self.name
        parts = [self.model.name.replace("/", "_")]
        if self.train.task == "paper":
            parts.append("paper")
        if self.tag:
            parts.append(self.tag)
        return "_".join(parts)

    @property
    def n_classes(self) -> int:
        return 3 if self.train.task == "competition" else 2

    def network_config(self) -> ModelConfig:
        """The ModelConfig of the network itself: 5 x K outputs, one input channel per crop slice."""
        return dataclasses.replace(self.model, num_classes=N_CONDITIONS * self.n_classes,
                                   in_chans=self.crops.n_slices)


def load_experiment_config(exp_dir: str | Path) -> ExperimentConfig:
    """``exp_dir/config.yaml``; DataError naming the folder when missing or not an experiment config."""
    path = Path(exp_dir) / CONFIG_YAML
    if not path.is_file():
        raise DataError(f"experiment {Path(exp_dir).name!r}: {path} not found")
    try:
        return config_mod.load(ExperimentConfig, path)
    except ConfigError as exc:
        raise DataError(f"experiment {Path(exp_dir).name!r}: {path} is not a valid experiment config ({exc})") \
            from exc


def fold_dir(exp_dir: str | Path, fold: int) -> Path:
    return Path(exp_dir) / f"fold{fold}"


# ----------------------------------------------------------------------------- the output contract


def select_logits(logits: torch.Tensor, cond: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 5*K) logits and (B,) condition indices -> (B, K) logits of each crop's condition."""
    return logits.view(logits.shape[0], N_CONDITIONS, k)[torch.arange(len(cond), device=logits.device), cond]


def to_input(crops: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 crops (N, H, W, C) -> the network's float32 input (N, C, H, W), standardised per channel with
    the statistics of the fold that trained the model (training, inference and the report all use this).
    Any layout is accepted: flipped (negative strides) or strided views, read-only memory maps, any dtype."""
    a = np.ascontiguousarray(crops, dtype=np.float32)   # a fresh array unless already contiguous float32
    if not a.flags.writeable:   # torch.from_numpy warns on read-only memory (a float32 memory map passes through)
        a = a.copy()
    x = torch.from_numpy(a).permute(0, 3, 1, 2)
    return standardise(x, torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
                       ).contiguous()


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float crops (B, C, H, W) in [0, 255] -> the network's input, per channel with the fold's statistics
    (in [0, 1] units): the one formula for training, OOF and test crops, wherever the batch is."""
    return (x / 255.0 - mean[:, None, None]) / std[:, None, None]


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'; 'auto' and 'cuda' mean the process's LOCAL_RANK
    GPU (cuda:0 outside torchrun). ConfigError when CUDA is asked for and absent."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name == "cuda":   # under torchrun each process its own GPU, not all of them on cuda:0
        name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {name!r} but no CUDA device is available")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"config key 'device': {name!r} is not a device (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def autocast(device: torch.device, enabled: bool) -> Any:
    """bfloat16 autocast on CUDA when enabled and the GPU computes in bfloat16 (Ampere and newer); a no-op
    context elsewhere. An older GPU (Kaggle's T4 and P100) would only emulate it, slower than float32, so it
    trains in float32 there (float16 would need loss scaling)."""
    if device.type == "cuda" and enabled and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained model (eval mode) and its metadata (config, classes, this fold's mean and std) from best.pt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
        cfg = config_mod.from_dict(ExperimentConfig, payload["config"])
    except Exception as exc:
        raise DataError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    model = create_model(cfg.network_config().without_pretrained())
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    payload["experiment_config"] = cfg
    return model, payload


@dataclass
class FoldModel:
    """One fold's trained network with the normalisation statistics it was trained with."""

    fold: int
    model: nn.Module
    mean: np.ndarray   # (n_slices,) in [0, 1] units
    std: np.ndarray


@dataclass
class ExperimentModels:
    """Every fold model of one experiment and the settings their crops must be cut with."""

    name: str
    cfg: ExperimentConfig
    folds: list[FoldModel]

    @property
    def crops(self) -> CropConfig:
        return self.cfg.crops

    def only_fold(self, fold: int) -> ExperimentModels | None:
        """The same experiment restricted to the model that held ``fold`` out (None if not trained)."""
        kept = [f for f in self.folds if f.fold == fold]
        return dataclasses.replace(self, folds=kept) if kept else None


def load_experiment_models(exp_dir: str | Path, device: str | torch.device = "cpu") -> ExperimentModels:
    """Every ``fold*/best.pt`` of a competition-task experiment; DataError naming the folder otherwise."""
    exp_dir = Path(exp_dir)
    ckpts = sorted(exp_dir.glob(f"fold*/{BEST_PT}"))
    if not ckpts:
        raise DataError(f"experiment {exp_dir} has no fold*/{BEST_PT} checkpoint")
    folds, cfg = [], None
    for c in ckpts:
        model, meta = load_checkpoint(c, device)
        cfg = meta["experiment_config"]
        fold = int(meta.get("fold", c.parent.name.removeprefix("fold")))
        folds.append(FoldModel(fold, model, np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)))
    assert cfg is not None
    if cfg.n_classes != 3:
        raise DataError(f"experiment {exp_dir} was trained on the paper task; only competition models predict")
    return ExperimentModels(exp_dir.name, cfg, folds)


# ----------------------------------------------------------------------------- the training prior


def prior_probabilities(train: pd.DataFrame) -> dict[str, np.ndarray]:
    """The best constant prediction per metric group under the metric: class counts (+1 smoothing) times
    the severity weights 1/2/4, normalised. Minimising sum_k w_k n_k (-log p_k) over p gives
    p_k proportional to w_k n_k, not the plain frequency n_k (which is worse than uniform for subarticular
    on the real class mix)."""
    long = train.melt(id_vars="study_id", value_vars=list(schema.LABEL_COLUMNS), var_name="col", value_name="sev")
    long = long.dropna(subset=["sev"])
    out = {}
    for group in schema.GROUPS:
        sev = long[long.col.map(schema.group_of_column) == group].sev.map(schema.SEVERITY_INDEX)
        mass = (np.bincount(sev, minlength=3).astype(float) + 1.0) * np.asarray(schema.SEVERITY_WEIGHTS)
        out[group] = mass / mass.sum()
    return out


def fill_out_of_fold(row_ids: list[str], preds: pd.DataFrame | None, train: pd.DataFrame, folds: pd.DataFrame
                     ) -> pd.DataFrame:
    """:func:`fill_with_prior` for out-of-fold rows: each fold's rows without a prediction get the prior of
    the other folds' labels, never one that saw the held-out labels. ``folds``: study_id, fold; rows of
    studies without a fold get the prior of all labels."""
    fold_of = folds.set_index("study_id").fold
    study = pd.Series([int(r.split("_", 1)[0]) for r in row_ids])
    row_fold = study.map(fold_of).fillna(-1).astype(int).to_numpy()
    parts = []
    for fold in np.unique(row_fold):
        ids = [r for r, f in zip(row_ids, row_fold) if f == fold]
        held = set(fold_of.index[fold_of == fold]) if fold >= 0 else set()
        parts.append(fill_with_prior(ids, preds, prior_probabilities(train[~train.study_id.isin(held)])))
    out = pd.concat(parts).set_index("row_id").loc[row_ids].reset_index()
    return out


def save_prior(exp_dir: str | Path, prior: dict[str, np.ndarray]) -> None:
    write_json(Path(exp_dir) / PRIOR_JSON, {g: np.asarray(v).tolist() for g, v in prior.items()})


def load_prior(folders: list[Path]) -> dict[str, np.ndarray]:
    """The training prior saved beside the first of ``folders`` that has one."""
    for folder in folders:
        path = folder / PRIOR_JSON
        if path.is_file():
            return {g: np.asarray(v, float) for g, v in json.loads(path.read_text()).items()}
    raise DataError(f"no {PRIOR_JSON} in {', '.join(str(f) for f in folders)}: train the experiments first")


def fill_with_prior(row_ids: list[str], preds: pd.DataFrame | None, prior: dict[str, np.ndarray]) -> pd.DataFrame:
    """Submission-format frame of exactly ``row_ids``: each row's prediction from ``preds`` where it has one,
    its group's prior elsewhere; floored at PROB_FLOOR and normalised per row."""
    cols = list(schema.SEVERITY_COLUMNS)
    vals = preds.set_index("row_id")[cols] if preds is not None and len(preds) else pd.DataFrame(columns=cols)
    arr = vals.reindex(row_ids).to_numpy(dtype=float, copy=True)
    fallback = np.array([prior[schema.group_of_column(r.split("_", 1)[1])] for r in row_ids]).reshape(-1, 3)
    missing = ~np.isfinite(arr).all(1)
    arr[missing] = fallback[missing]
    arr = np.clip(arr, PROB_FLOOR, None)
    arr /= arr.sum(1, keepdims=True)
    out = pd.DataFrame({"row_id": row_ids})
    for j, c in enumerate(cols):
        out[c] = arr[:, j]
    return out
