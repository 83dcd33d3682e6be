"""The paper-task experiments a report is made of: each one's config, out-of-fold predictions and summary,
read from the experiment folders ``lsdc.train`` wrote."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lsdc import config as config_mod
from lsdc import schema
from lsdc.errors import DataError
from lsdc.experiment import METRICS_JSON, PAPER_OOF_CSV, ExperimentConfig, load_experiment_config
from lsdc.models import ATTENTION
from lsdc.paper import PAPER_CLASSES

log = logging.getLogger(__name__)

OOF_COLUMNS = ("study_id", "condition", "level", "label", "target", *PAPER_CLASSES)
BRANCH_NAMES = {"cbam": "CBAM", "mhsa": "MHSA", "slot": "slot attention"}


@dataclass
class PaperExperiment:
    """One trained `paper`-task experiment: its config, out-of-fold predictions and summary."""

    name: str
    path: Path
    cfg: ExperimentConfig
    preds: pd.DataFrame
    metrics: dict[str, Any]

    @property
    def is_attention(self) -> bool:
        return self.cfg.model.name == ATTENTION

    @property
    def removed(self) -> tuple[str, ...]:
        """Attention branches switched off (the paper's ablations); empty for the full model."""
        return self.cfg.model.attention.branches_off if self.is_attention else ()

    @property
    def model_label(self) -> str:
        """e.g. 'attention', 'attention w/o CBAM', 'densenet201'."""
        base = self.cfg.model.label
        return base + (" w/o " + " + ".join(BRANCH_NAMES[b] for b in self.removed) if self.removed else "")

    @property
    def evaluation(self) -> str:
        n = self.cfg.folds.n_folds
        folds = self.metrics.get("folds", [])
        if self.cfg.train.split == "holdout":
            return f"holdout (fold 0 of {n})"
        return f"OOF {len(folds)}/{n} folds" if len(folds) != n else f"OOF {n} folds"

    def family(self) -> str:
        """Settings shared by a full attention model and its ablations (all but the branch switches)."""
        d = config_mod.to_dict(self.cfg)
        d.pop("name"), d.pop("tag")
        for key in ("use_cbam", "use_mhsa", "use_slot"):
            d["model"]["attention"].pop(key)
        for key in ("workers", "device"):
            d["train"].pop(key)
        d["crops"].pop("workers")
        d["folds"].pop("train_folds")
        return json.dumps(d, sort_keys=True)


def is_paper_experiment(exp_dir: Path) -> bool:
    """Whether ``exp_dir/config.yaml`` is an experiment config of ``train.task: paper``."""
    try:
        return load_experiment_config(exp_dir).train.task == "paper"
    except DataError:
        return False


def load_predictions(path: Path) -> pd.DataFrame:
    """A checked ``oof_paper.csv``: the task's columns, known conditions, 0/1 targets, probabilities."""
    if not path.is_file():
        raise DataError(f"experiment {path.parent.name!r}: {path} not found (training has not finished; "
                        "scripts/02_train.py --task paper)")
    df = pd.read_csv(path)
    missing = [c for c in OOF_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}")
    if df.empty:
        raise DataError(f"{path} holds no predictions")
    unknown = sorted(set(df.condition) - set(schema.CONDITIONS))
    if unknown:
        raise DataError(f"{path}: unknown condition {unknown[0]!r}")
    if not df.target.isin([0, 1]).all():
        raise DataError(f"{path}: column 'target' must hold 0 (normal/mild) or 1 (severe)")
    if df[list(PAPER_CLASSES)].isna().any().any():
        raise DataError(f"{path}: empty probabilities")
    return df


def load_paper_experiment(exp_dir: str | Path) -> PaperExperiment:
    """A `paper`-task experiment folder written by ``lsdc.train``; DataError naming what is missing."""
    exp_dir = Path(exp_dir)
    name = exp_dir.name
    if not exp_dir.is_dir():
        raise DataError(f"experiment {name!r}: folder {exp_dir} not found")
    cfg = load_experiment_config(exp_dir)
    if cfg.train.task != "paper":
        raise DataError(f"experiment {name!r} was trained on task {cfg.train.task!r}, not 'paper' "
                        "(train with scripts/02_train.py --task paper)")
    preds = load_predictions(exp_dir / PAPER_OOF_CSV)
    metrics_path = exp_dir / METRICS_JSON
    if not metrics_path.is_file():
        raise DataError(f"experiment {name!r}: {metrics_path} not found (training has not finished)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"experiment {name!r}: {metrics_path} is not valid JSON ({exc})") from exc
    return PaperExperiment(name, exp_dir, cfg, preds, metrics)


def find_paper_experiments(output_dir: str | Path, names: Sequence[str] | None = None
                           ) -> tuple[list[PaperExperiment], list[str]]:
    """The named experiments, or every `paper`-task folder in ``output_dir`` (sorted by name).

    Returns the experiments and, when searching, the names of `paper`-task folders skipped because
    their training has not finished (no oof_paper.csv or metrics.json).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise DataError(f"output folder {output_dir} not found")
    if names:
        return [load_paper_experiment(output_dir / n) for n in names], []
    found, skipped = [], []
    for d in sorted(p for p in output_dir.iterdir() if p.is_dir()):
        if not is_paper_experiment(d):
            continue
        if not (d / PAPER_OOF_CSV).is_file() or not (d / METRICS_JSON).is_file():
            log.warning("experiment %s has no %s yet (training unfinished): left out", d.name, PAPER_OOF_CSV)
            skipped.append(d.name)
            continue
        found.append(load_paper_experiment(d))
    if not found:
        raise DataError(f"no finished paper-task experiment in {output_dir}: train one with "
                        "scripts/02_train.py --task paper, or run scripts/run_paper_comparison.py")
    return found, skipped


def display_names(exps: Sequence[PaperExperiment]) -> dict[str, str]:
    """Legend names: the model label, or the experiment name where two share a label."""
    labels = [e.model_label for e in exps]
    return {e.name: (e.model_label if labels.count(e.model_label) == 1 else e.name) for e in exps}


def conditions_of(df: pd.DataFrame) -> list[str]:
    """The conditions present in predictions, in the competition's order."""
    return [c for c in schema.CONDITIONS if c in set(df.condition)]
