"""The whole pipeline in one call: data (synthetic if none), crops, localiser, models, ensemble, submission,
and the pictures of the run (training curves per experiment, the OOF chart)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import prepare
from lsdc.data import load_train_labels
from lsdc.ensemble import EnsembleConfig, build_ensemble, table_names
from lsdc.errors import ConfigError
from lsdc.experiment import LOCALIZED_OOF_CSV, OOF_CSV, ExperimentConfig, load_prior
from lsdc.folds import prepare_folds
from lsdc.inference import (
    FOLD_PREDICTIONS_CSV,
    REPORT_CSV,
    PredictConfig,
    predict_submission,
    provenance_counts,
    read_report,
)
from lsdc.io import write_csv
from lsdc.labeled_test import read_labeled_test
from lsdc.localize import LocalizerExperiment, train_localizer
from lsdc.localized_oof import SCORES_CSV, localized_oof
from lsdc.run_figures import draw_run_figures
from lsdc.synthetic import SyntheticConfig, generate
from lsdc.train import train_experiment, train_on_devices

log = logging.getLogger(__name__)
TEST_SCORES_CSV = "test_scores.csv"   # the submission, each model and fold average on labeled test studies
ANNOTATED_SPEC_JSON = "ensemble_annotated.json"   # the blend fitted on annotated-point OOF, for comparison


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
    # Train each experiment's folds concurrently, one process per device (["cuda:0", "cuda:1"] on Kaggle's
    # two T4s); empty or one device: one process, train.device of each experiment.
    devices: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.ensemble_on not in ("localized", "annotated"):
            raise ConfigError(f"config key 'ensemble_on' must be 'localized' or 'annotated', got {self.ensemble_on!r}")


def prepare_inputs(data_dir: str | Path, output_dir: str | Path, experiments: Sequence[ExperimentConfig],
                   synthetic: SyntheticConfig, fold_counts: Sequence[int] = ()) -> None:
    """Make what training needs and is missing: the synthetic data when ``data_dir`` holds no train.csv
    (a folder holding anything else is refused), the folds of every experiment (and ``fold_counts``), and
    the crops of every distinct crop setting (valid crops already written are kept)."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    if not (data_dir / schema.TRAIN_CSV).is_file():
        log.info("no competition data in %s: generating %d synthetic training studies", data_dir,
                 synthetic.train_studies)
        generate(data_dir, synthetic)
    seed = experiments[0].folds.seed
    for n in sorted({e.folds.n_folds for e in experiments} | set(fold_counts)):
        prepare_folds(data_dir, output_dir, n, seed)
    for dirname, crops in {e.crops.dirname: e.crops for e in experiments}.items():
        log.info("crops %s", dirname)
        prepare(data_dir, output_dir, crops)


def run_pipeline(cfg: PipelineConfig, data_dir: str | Path, output_dir: str | Path,
                 root: str | Path = ".") -> dict[str, Any]:
    """Run every step in order; each step resumes, so rerunning after an interruption continues. The result
    holds, besides the tables and paths, ``provenance``: the submission's rows counted per source (models and
    folds, or the prior) and reason (:func:`lsdc.inference.provenance_counts`)."""
    cfg.check()
    data_dir, output_dir, root = Path(data_dir), Path(output_dir), Path(root)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        times[name] = round(time.perf_counter() - start, 1)
        log.info("step %s done in %.1f s", name, times[name])

    experiments = [config_mod.load(ExperimentConfig, root / ref.config, ref.set) for ref in cfg.experiments]
    loc = config_mod.load(LocalizerExperiment, root / cfg.localizer.config, cfg.localizer.set)
    s = time.perf_counter()
    prepare_inputs(data_dir, output_dir, experiments, cfg.synthetic, [loc.folds.n_folds])
    lap("data and crops", s)

    s = time.perf_counter()
    loc_metrics = train_localizer(loc, data_dir, output_dir)
    lap("localizer", s)

    for e in experiments:
        s = time.perf_counter()
        if len(cfg.devices) > 1:
            train_on_devices(e, data_dir, output_dir, cfg.devices)
        else:
            train_experiment(e, data_dir, output_dir)
        lap(f"train {e.experiment}", s)

    s = time.perf_counter()
    names = [e.experiment for e in experiments]
    labels = load_train_labels(data_dir)
    labeled_test = (data_dir / schema.TEST_SOLUTION_CSV).is_file()
    pcfg = dataclasses.replace(cfg.predict, localizer=cfg.predict.localizer or loc.name,
                               fold_predictions=cfg.predict.fold_predictions or labeled_test)
    localized = cfg.ensemble_on == "localized"
    if localized and any(e.folds.n_folds != loc.folds.n_folds for e in experiments):
        log.warning("the localiser (%d folds) and the models are on different folds: the ensemble is "
                    "fitted on the annotated OOF", loc.folds.n_folds)
        localized = False
    if not localized and pcfg.tta:
        log.warning("predict.tta=%s but the ensemble is fitted on the annotated OOF, which has no test-time views",
                    pcfg.tta)
    # Fitted on the annotated OOF: the ensemble itself, or (when fitted on the localised OOF) the ensemble of
    # the annotated OOF table, for comparison.
    annotated_spec = ANNOTATED_SPEC_JSON if localized else pcfg.ensemble
    table, spec = build_ensemble(output_dir, labels, EnsembleConfig(experiments=names, spec_file=annotated_spec))
    oof_table = table_names(OOF_CSV)
    if localized:
        localized_oof(data_dir, output_dir, PredictConfig(localizer=pcfg.localizer, experiments=names,
                                                          tta=pcfg.tta, device=pcfg.device,
                                                          batch_size=pcfg.batch_size),
                      output_dir / SCORES_CSV)
        table, spec = build_ensemble(output_dir, labels, EnsembleConfig(
            experiments=names, oof_file=LOCALIZED_OOF_CSV, spec_file=pcfg.ensemble))
        oof_table = table_names(LOCALIZED_OOF_CSV)
    lap("ensemble", s)

    s = time.perf_counter()
    submission = Path(cfg.submission)
    predict_submission(data_dir, output_dir, submission, pcfg)
    provenance = provenance_counts(read_report(submission.with_name(REPORT_CSV)))
    test_scores = None
    if labeled_test:
        test_scores = read_labeled_test(data_dir, submission, submission.with_name(FOLD_PREDICTIONS_CSV), spec,
                               load_prior([output_dir / spec.experiments.get(m, m) for m in spec.models]),
                               pcfg.fold_average)
        if test_scores is not None:
            write_csv(test_scores, output_dir / TEST_SCORES_CSV)
    lap("predict", s)

    s = time.perf_counter()
    figures = draw_run_figures(output_dir, names)   # <experiment>/curves.png, oof_chart.png
    lap("figures", s)
    times["total"] = round(time.perf_counter() - t0, 1)
    return {"oof_table": output_dir / oof_table[0], "oof_table_md": output_dir / oof_table[1],
            "annotated_table": output_dir / table_names(OOF_CSV)[0],
            "submission": submission, "times": times, "figures": figures,
            "localizer_median_error_mm": loc_metrics["median_error_mm"], "localizer_metrics": loc_metrics,
            "spec": spec, "table": table, "localization_cost": output_dir / SCORES_CSV if localized else None,
            "test_scores": test_scores, "provenance": provenance}
