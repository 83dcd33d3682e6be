"""The whole pipeline in one call: data (synthetic if none), crops, localiser, models, ensemble, submission."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsdc import config as config_mod
from lsdc import schema
from lsdc.predict import PredictConfig
from lsdc.synthetic import SyntheticConfig

log = logging.getLogger(__name__)


@dataclass
class StepRef:
    """A step's own config file plus overrides, e.g. {config: configs/smoke.yaml, set: [model.name=resnet101]}."""

    config: str
    set: list[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)   # used only when --data-dir is empty
    experiments: list[StepRef] = field(default_factory=lambda: [
        StepRef("configs/attention.yaml"), StepRef("configs/densenet201.yaml"), StepRef("configs/resnet101.yaml")])
    localizer: StepRef = field(default_factory=lambda: StepRef("configs/localizer.yaml"))
    predict: PredictConfig = field(default_factory=PredictConfig)
    submission: str = "submission/submission.csv"
    # What the ensemble is fitted on: "localized" (crops at held-out localiser points, as test rows see
    # them; it needs the localiser and the models on the same folds) or "annotated" (oof.csv).
    ensemble_on: str = "localized"

    def check(self) -> None:
        from lsdc.errors import ConfigError

        if self.ensemble_on not in ("localized", "annotated"):
            raise ConfigError(f"config key 'ensemble_on' must be 'localized' or 'annotated', got {self.ensemble_on!r}")


def has_competition_data(data_dir: Path) -> bool:
    return (data_dir / schema.TRAIN_CSV).is_file()


def run(cfg: PipelineConfig, data_dir: str | Path, output_dir: str | Path, root: str | Path = ".") -> dict[str, Any]:
    """Run every step in order; each step resumes, so rerunning after an interruption continues."""
    from lsdc.crops import prepare
    from lsdc.ensemble import OOF_CSV, EnsembleConfig, build_ensemble, table_names
    from lsdc.folds import load_train_labels, prepare_folds
    from lsdc.localize import LocalizerExperiment
    from lsdc.localize import train as train_localizer
    from lsdc.predict import LOCALIZED_OOF_CSV, localized_oof, predict
    from lsdc.synthetic import generate
    from lsdc.train import ExperimentConfig
    from lsdc.train import run as train_experiment

    cfg.check()
    data_dir, output_dir, root = Path(data_dir), Path(output_dir), Path(root)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        times[name] = round(time.perf_counter() - start, 1)
        log.info("step %s done in %.1f s", name, times[name])

    s = time.perf_counter()
    if not has_competition_data(data_dir):
        log.info("no competition data in %s: generating the synthetic default", data_dir)
        generate(data_dir, cfg.synthetic)
    lap("data", s)

    experiments = [config_mod.load(ExperimentConfig, root / ref.config, ref.set) for ref in cfg.experiments]
    loc = config_mod.load(LocalizerExperiment, root / cfg.localizer.config, cfg.localizer.set)
    s = time.perf_counter()
    for n in {e.folds.n_folds for e in experiments} | {loc.folds.n_folds}:
        prepare_folds(data_dir, output_dir, n, experiments[0].folds.seed)
    done_crops: set[str] = set()
    for e in experiments:
        if e.crops.dirname not in done_crops:
            prepare(data_dir, output_dir, e.crops)
            done_crops.add(e.crops.dirname)
    lap("crops", s)

    s = time.perf_counter()
    loc_metrics = train_localizer(loc, data_dir, output_dir)
    lap("localizer", s)

    summaries = {}
    for e in experiments:
        s = time.perf_counter()
        summaries[e.experiment] = train_experiment(e, data_dir, output_dir)
        lap(f"train {e.experiment}", s)

    s = time.perf_counter()
    names = [e.experiment for e in experiments]
    labels = load_train_labels(data_dir)
    table, spec = build_ensemble(output_dir, labels, EnsembleConfig(experiments=names))
    oof_table = output_dir / table_names(OOF_CSV)[1]
    pcfg = cfg.predict
    if pcfg.localizer == PredictConfig().localizer:
        pcfg.localizer = loc.name
    if cfg.ensemble_on == "localized":
        if all(e.folds.n_folds == loc.folds.n_folds for e in experiments):
            localized_oof(data_dir, output_dir, PredictConfig(localizer=pcfg.localizer, experiments=names,
                                                              device=pcfg.device), output_dir / "localized_oof.csv")
            table, spec = build_ensemble(output_dir, labels,
                                         EnsembleConfig(experiments=names, oof_file=LOCALIZED_OOF_CSV))
            oof_table = output_dir / table_names(LOCALIZED_OOF_CSV)[1]
        else:
            log.warning("the localiser (%d folds) and the models are on different folds: the ensemble is "
                        "fitted on the annotated OOF", loc.folds.n_folds)
    lap("ensemble", s)

    s = time.perf_counter()
    submission = Path(cfg.submission)
    predict(data_dir, output_dir, submission, pcfg)
    lap("predict", s)
    times["total"] = round(time.perf_counter() - t0, 1)
    return {"oof_table": oof_table, "annotated_table": output_dir / table_names(OOF_CSV)[1],
            "submission": submission, "times": times,
            "localizer_median_error_mm": loc_metrics["median_error_mm"],
            "ensemble_oof_score": spec.ensemble_score.get("score"), "table": table}
