"""One experiment's typed config (crops, folds, model, training recipe), saved as config.yaml beside its outputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from lsdc import config as config_mod
from lsdc.crops import CropConfig
from lsdc.errors import ConfigError, DataError
from lsdc.experiment.contract import N_CONDITIONS
from lsdc.experiment.files import CONFIG_YAML
from lsdc.models import ModelConfig
from lsdc.train.config import TrainConfig


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
