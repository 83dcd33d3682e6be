"""A weights folder of untrained models in the exact layout training writes, for timing inference.

Not a benchmark itself (imported as ``untrained`` by the benchmark scripts). Prediction costs the same
with random weights as with trained ones (same networks, same crops, same number of fold models); only
where the localiser puts the points differs, not how much work it does. This lets a machine that has
trained nothing (a lent GPU, a fresh clone) time the full configs: 5 folds of each model at 224 px and the
full localiser.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lsdc import config as config_mod
from lsdc import schema
from lsdc.ensemble import equal_spec, save_ensemble
from lsdc.experiment import BEST_PT, CONFIG_YAML, ExperimentConfig, fold_dir, save_checkpoint, save_prior
from lsdc.localize import VIEWS, Localizer, LocalizerExperiment
from lsdc.models import create_model
from lsdc.models.localizer import KeypointNet


def untrained_weights(out: Path, configs: list[Path], localizer_config: Path, n_folds: int = 5) -> Path:
    """Write ``out`` with each config's experiment (``n_folds`` random fold checkpoints, config, a uniform
    prior), the localiser of ``localizer_config`` (random, ``n_folds`` models per view) and an
    equal-weight ensemble.json; returns ``out``."""
    torch.manual_seed(0)
    names = []
    for path in configs:
        cfg = config_mod.load(ExperimentConfig, path)
        cfg.folds.n_folds = n_folds
        exp_dir = out / cfg.experiment
        config_mod.save(cfg, exp_dir / CONFIG_YAML)
        save_prior(exp_dir, {g: [1 / 3] * 3 for g in schema.GROUPS})
        net = cfg.network_config().without_pretrained()
        for fold in range(n_folds):
            model = create_model(net)
            meta = {"config": config_mod.to_dict(cfg), "classes": list(schema.SEVERITY_COLUMNS),
                    "conditions": list(schema.CONDITIONS), "mean": [0.3] * cfg.crops.n_slices,
                    "std": [0.2] * cfg.crops.n_slices, "fold": fold, "model": model.state_dict(), "epoch": 0}
            save_checkpoint(fold_dir(exp_dir, fold) / BEST_PT, meta)
        names.append(cfg.experiment)
    exp = config_mod.load(LocalizerExperiment, localizer_config)
    lcfg = exp.localizer
    models = {v.name: [KeypointNet(3, v.channels, lcfg.width, lcfg.stride).eval() for _ in range(n_folds)]
              for v in VIEWS if v.name != "canal_roi" or lcfg.canal_roi_mm > 0}
    Localizer(models, lcfg).save(out / exp.name)
    save_ensemble(equal_spec(names), out / "ensemble.json")
    return out
