"""The case sheets' cases (paper Figure 12): per condition and true class the most confidently correct
and the most confidently misclassified crop, each explained by the checkpoint of the fold that held its
study out (so the explanation is of the very prediction the tables count)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from lsdc.crops import load_crop
from lsdc.errors import DataError
from lsdc.experiment import BEST_PT, COND_INDEX, fold_dir, load_checkpoint, to_input
from lsdc.explain import CaseMaps, explain
from lsdc.folds import folds_csv, load_folds
from lsdc.paper import THRESHOLD
from lsdc.report.experiments import PaperExperiment, conditions_of
from lsdc.sides import mirror_sides


def select_cases(exp: PaperExperiment, index: pd.DataFrame, per_cell: int = 1) -> pd.DataFrame:
    """Sample crops per condition, true class and outcome: the most confident correct ones and the
    most confidently misclassified ones (``per_cell`` each), with their crop path."""
    keys = ["study_id", "condition", "level"]
    df = exp.preds.merge(index[[*keys, "path"]].drop_duplicates(keys), on=keys, how="inner")
    df["pred"] = (df.severe >= THRESHOLD).astype(int)
    df["correct"] = df.pred == df.target
    df["p_true"] = np.where(df.target == 1, df.severe, df.normal_mild)
    picks = []
    for cond in conditions_of(df):
        for target in (0, 1):
            for correct in (True, False):
                g = df[(df.condition == cond) & (df.target == target) & (df.correct == correct)]
                g = g.sort_values(["p_true", "study_id"], ascending=[not correct, True])
                picks.append(g.head(per_cell))
    return pd.concat(picks, ignore_index=True) if picks else df.head(0)


class CheckpointCache:
    """Fold checkpoints of one experiment, loaded once each; the fold must be the sample's held-out fold."""

    def __init__(self, exp: PaperExperiment) -> None:
        self.exp = exp
        self.models: dict[int, tuple[nn.Module, dict[str, Any]]] = {}

    def get(self, fold: int) -> tuple[nn.Module, dict[str, Any]]:
        if fold not in self.models:
            path = fold_dir(self.exp.path, fold) / BEST_PT
            if not path.is_file():
                raise DataError(f"experiment {self.exp.name!r}: checkpoint {path} not found "
                                f"(needed for a case held out in fold {fold})")
            model, meta = load_checkpoint(path, "cpu")
            if int(meta.get("fold", fold)) != fold:
                raise DataError(f"{path} was trained for fold {meta.get('fold')}, not {fold}")
            self.models[fold] = (model, meta)
        return self.models[fold]


@dataclass
class CaseResult:
    """One explained case: its row (study, condition, label, fold, probabilities) and its maps."""

    row: dict[str, Any]
    maps: CaseMaps
    crop: np.ndarray


def explain_cases(exp: PaperExperiment, output_dir: Path, cases: pd.DataFrame) -> list[CaseResult]:
    """Explain every selected case with the checkpoint of the fold that held its study out."""
    folds = load_folds(output_dir, exp.cfg.folds.n_folds).set_index("study_id").fold
    crops_dir = output_dir / exp.cfg.crops.dirname
    cache = CheckpointCache(exp)
    results = []
    for r in cases.to_dict("records"):
        if r["study_id"] not in folds.index:
            raise DataError(f"study {r['study_id']} of experiment {exp.name!r} has no fold in "
                            f"{output_dir / folds_csv(exp.cfg.folds.n_folds)}")
        fold = int(folds[r["study_id"]])
        model, meta = cache.get(fold)
        crop, cond = load_crop(crops_dir / r["path"], exp.cfg.crops.n_slices), COND_INDEX[r["condition"]]
        if exp.cfg.train.side_agnostic:   # explained as the model saw it: a right side mirrored onto the left
            mirrored, conds = mirror_sides(crop[None], np.array([cond]))
            crop, cond = mirrored[0], int(conds[0])
        x = to_input(crop[None], np.asarray(meta["mean"]), np.asarray(meta["std"]))
        maps = explain(model, x, cond, len(meta["classes"]))
        results.append(CaseResult({**r, "fold": fold, "severe_recomputed": float(maps.probs[-1])}, maps, crop))
    return results
