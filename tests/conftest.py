"""Shared fixtures: one small synthetic dataset per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsdc.synthetic import SyntheticConfig, generate

SMALL = SyntheticConfig(train_studies=8, test_studies=3, seed=123, workers=2,
                        missing_series_rate=0.0, no_coords_rate=0.0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated competition folder (8 train, 3 test studies)."""
    out = tmp_path_factory.mktemp("data") / "rsna"
    generate(out, SMALL, progress=False)
    return out
