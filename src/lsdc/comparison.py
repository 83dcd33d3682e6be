"""The paper's comparison in one call: the full attention model, its three ablations and the DenseNet201
and ResNet101 baselines, trained on the paper's task from one base config, then the report."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lsdc.errors import ConfigError
from lsdc.experiment import ExperimentConfig
from lsdc.models import ATTENTION, ModelConfig
from lsdc.pipeline import prepare_inputs
from lsdc.report import Report, build_report
from lsdc.synthetic import SyntheticConfig
from lsdc.train import train_experiment

log = logging.getLogger(__name__)

ABLATIONS = {"no_cbam": "use_cbam", "no_mhsa": "use_mhsa", "no_slot": "use_slot"}
BASELINES = ("densenet201", "resnet101")
PAPER_VARIANTS = (ATTENTION, *ABLATIONS, *BASELINES)


def variant_config(base: ExperimentConfig, variant: str, baseline_steps: int | None = None,
                   baseline_weights: dict[str, str] | None = None) -> ExperimentConfig:
    """The `paper`-task config of one comparison variant, derived from an attention-model ``base``.

    "attention": the base itself; "no_cbam"/"no_mhsa"/"no_slot": one branch switched off, tag suffixed;
    a baseline name: that timm model with default settings (local weights from ``baseline_weights``),
    ``train.max_steps_per_epoch`` capped at ``baseline_steps`` when given.
    """
    if variant not in PAPER_VARIANTS:
        raise ConfigError(f"unknown comparison variant {variant!r} (use {', '.join(PAPER_VARIANTS)})")
    if base.model.name != ATTENTION:
        raise ConfigError(f"the comparison needs a config of the attention model (model.name: {ATTENTION}), "
                          f"not {base.model.name!r}")
    cfg = copy.deepcopy(base)
    cfg.train.task = "paper"
    if base.name:
        cfg.name = f"{base.name}_{variant}"
    if variant in ABLATIONS:
        cfg.model.attention = dataclasses.replace(cfg.model.attention, **{ABLATIONS[variant]: False})
        cfg.tag = "_".join(t for t in (base.tag, variant) if t)
    elif variant in BASELINES:
        weights = (baseline_weights or {}).get(variant)
        cfg.model = ModelConfig(name=variant, in_chans=base.model.in_chans, pretrained_path=weights)
        if baseline_steps is not None:
            cfg.train.max_steps_per_epoch = baseline_steps
    return cfg


def run_comparison(base: ExperimentConfig, data_dir: str | Path, output_dir: str | Path,
                   variants: Sequence[str] = PAPER_VARIANTS, baseline_steps: int | None = None,
                   baseline_weights: dict[str, str] | None = None,
                   synthetic: SyntheticConfig | None = None) -> tuple[Report, pd.DataFrame]:
    """Train every variant on the paper task (finished ones are kept), then build the report.

    Missing inputs (synthetic data when ``data_dir`` holds none, folds, crops) are made first. Returns the
    report and a table of each variant's experiment and wall time in this run.
    """
    configs = [variant_config(base, v, baseline_steps, baseline_weights) for v in variants]
    prepare_inputs(data_dir, output_dir, configs[:1], synthetic or SyntheticConfig(workers=max(base.crops.workers, 1)))
    rows = []
    for variant, cfg in zip(variants, configs):
        log.info("== %s: experiment %s", variant, cfg.experiment)
        t0 = time.perf_counter()
        summary = train_experiment(cfg, data_dir, output_dir)
        rows.append({"variant": variant, "experiment": cfg.experiment, "wall_seconds": time.perf_counter() - t0,
                     "train_seconds": summary["train_seconds"]})
    report = build_report(output_dir, data_dir, [c.experiment for c in configs])
    return report, pd.DataFrame(rows)
