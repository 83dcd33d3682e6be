"""Trained fold models: written atomically, read back with their config and normalisation statistics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lsdc import config as config_mod
from lsdc.crops import CropConfig
from lsdc.errors import DataError
from lsdc.experiment.config import ExperimentConfig
from lsdc.experiment.files import BEST_PT
from lsdc.io import atomic_path
from lsdc.models import create_model


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
