"""The ensemble spec (``ensemble.json``): what prediction blends, how, and the record of how it was chosen."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsdc import schema
from lsdc.errors import DataError
from lsdc.io import write_json

SPEC_JSON = "ensemble.json"
SPEC_VERSION = 2
WEIGHT_TOL = 1e-6                  # how far a saved group's weights may sum from 1
UNKNOWN_KIND = "unknown"           # the kind of an experiment without a readable config.yaml model section
COMBINE_RULE = "weighted arithmetic mean of per-group tempered probabilities, renormalised per row"


@dataclass
class EnsembleSpec:
    """A chosen ensemble: everything inference needs to blend per-model predictions, plus its OOF record.

    ``models`` are the shipped models only (one, when no blend beat the best single model out of fold);
    ``oof_scores`` and ``kinds`` cover every model that was considered.
    """

    models: list[str]                                   # experiment names, in blending order
    weights: dict[str, dict[str, float]]                # group -> model -> weight (>= 0, sum 1)
    temperatures: dict[str, float]                      # group -> T (> 0)
    experiments: dict[str, str] = field(default_factory=dict)   # model -> folder name under outputs/
    kinds: dict[str, str] = field(default_factory=dict)         # model -> attention, densenet201, ...
    oof_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> official terms
    # The shipped spec judged on rows it was not fitted on: a fitted blend (or temperature) nested, each fold
    # blended with what was fitted on the other folds; a raw single model, its plain OOF.
    nested_score: dict[str, float] = field(default_factory=dict)
    in_sample_score: dict[str, float] = field(default_factory=dict)   # the same, fitted and scored on all rows
    shipped: str = ""                                   # what was chosen and why, in words
    fitted: bool = False                                # weights or temperatures were fitted (False: as it is)
    selection: list[dict[str, Any]] = field(default_factory=list)     # each candidate tried, its nested score
    fit: dict[str, Any] = field(default_factory=dict)   # objective, group losses, row counts
    combine: str = COMBINE_RULE
    version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def equal_spec(models: list[str]) -> EnsembleSpec:
    """Every model with the same weight in every group, T = 1: the blend when none was fitted."""
    w = {g: {m: 1.0 / len(models) for m in models} for g in schema.GROUPS}
    return EnsembleSpec(models=list(models), weights=w, temperatures={g: 1.0 for g in schema.GROUPS},
                        experiments={m: m for m in models})


def single_spec(model: str) -> EnsembleSpec:
    """One model alone, untouched (weight 1, T = 1)."""
    return equal_spec([model])


def save_ensemble(spec: EnsembleSpec, path: str | os.PathLike) -> None:
    """Write the spec as JSON (atomically)."""
    write_json(path, spec.to_dict())


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_spec(spec: EnsembleSpec, source: str) -> None:
    """DataError naming ``source`` unless every group has weights over exactly the models and a temperature."""
    models = spec.models
    if not isinstance(models, list) or not models or len(set(models)) != len(models):
        raise DataError(f"{source}: 'models' must be a non-empty list of distinct names, got {models!r}")
    if not isinstance(spec.weights, dict) or not isinstance(spec.temperatures, dict):
        raise DataError(f"{source}: 'weights' and 'temperatures' must be mappings keyed by group {list(schema.GROUPS)}")
    for group in schema.GROUPS:
        w = spec.weights.get(group)
        if not isinstance(w, dict) or set(w) != set(models):
            raise DataError(f"{source}: weights of group {group!r} must name exactly the models {models}")
        values = list(w.values())
        if not (all(_is_number(v) and v >= 0 for v in values) and abs(sum(values) - 1.0) <= WEIGHT_TOL):
            raise DataError(f"{source}: weights of group {group!r} must be non-negative and sum to 1, got {w}")
        t = spec.temperatures.get(group)
        if not (_is_number(t) and t > 0):
            raise DataError(f"{source}: temperature of group {group!r} must be a positive number, got {t!r}")


def load_ensemble(path: str | os.PathLike) -> EnsembleSpec:
    """Read and check an ensemble.json written by :func:`save_ensemble`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ensemble spec {path} not found: run scripts/04_ensemble.py first")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the ensemble spec ({exc})") from exc
    if not isinstance(raw, dict) or not {"models", "weights", "temperatures"} <= set(raw):
        raise DataError(f"{path}: not an ensemble spec (needs 'models', 'weights', 'temperatures')")
    if raw.get("version") != SPEC_VERSION:
        raise DataError(f"{path}: ensemble spec version {raw.get('version')}, this code reads {SPEC_VERSION}: "
                        "fit it again with scripts/04_ensemble.py")
    names = {f.name for f in dataclasses.fields(EnsembleSpec)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise DataError(f"{path}: unknown ensemble spec key(s) {unknown}")
    spec = EnsembleSpec(**raw)
    check_spec(spec, str(path))
    return spec
