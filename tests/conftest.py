"""Shared fixtures: one small synthetic dataset per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsdc import config
from lsdc.crops import prepare
from lsdc.experiment import ExperimentConfig, FoldConfig
from lsdc.folds import prepare_folds
from lsdc.localize import LocalizerConfig, LocalizerExperiment, train_localizer
from lsdc.synthetic import SyntheticConfig, generate
from lsdc.train import train_experiment

SMALL = SyntheticConfig(train_studies=8, test_studies=3, seed=123, workers=2,
                        missing_series_rate=0.0, no_coords_rate=0.0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated competition folder (8 train, 3 test studies)."""
    out = tmp_path_factory.mktemp("data") / "rsna"
    generate(out, SMALL, show_progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic data (36 train, 6 test), smoke crops and 2 folds, and one smoke-trained attention model."""
    root = tmp_path_factory.mktemp("smoke")
    data = root / "data"
    generate(data, SyntheticConfig(train_studies=36, test_studies=6, seed=2024, workers=2), show_progress=False)
    out = root / "outputs"
    cfg = config.load(ExperimentConfig, Path(__file__).parents[1] / "configs" / "smoke.yaml")
    prepare_folds(data, out, cfg.folds.n_folds, cfg.folds.seed)
    prepare(data, out, cfg.crops, show_progress=False)
    summary = train_experiment(cfg, data, out)
    return {"data": data, "out": out, "cfg": cfg, "summary": summary}


@pytest.fixture(scope="session")
def smoke_localizer(smoke_run: dict) -> dict:
    """A small localiser trained on the smoke data's 2 folds, with its out-of-fold metrics."""
    exp = LocalizerExperiment(name="localizer_test", folds=FoldConfig(n_folds=2),
                              localizer=LocalizerConfig(image_size=96, width=8, epochs=12))
    metrics = train_localizer(exp, smoke_run["data"], smoke_run["out"])
    return {"name": exp.name, "metrics": metrics}
