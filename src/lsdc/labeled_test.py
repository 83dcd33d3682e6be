"""Scores on labeled test studies (the synthetic stand-in's ``test_solution.csv``): the shipped submission,
each model alone and each way of averaging the fold models, with 95% intervals and paired differences
over the same resampled test studies (:mod:`lsdc.bootstrap`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lsdc import bootstrap, metric, schema
from lsdc.ensemble import FOLD_AVERAGES, EnsembleSpec, blend_folds, single_spec
from lsdc.experiment import fill_with_prior

SHIPPED = "submission"


def fold_frames_of(table: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """``fold_predictions.csv`` (model, fold, row_id, probabilities) as model -> one frame per fold."""
    cols = list(schema.SUBMISSION_COLUMNS)
    return {str(m): [f[cols].reset_index(drop=True) for _, f in g.groupby("fold", sort=True)]
            for m, g in table.groupby("model", sort=False)}


def labeled_test_table(solution: pd.DataFrame, submission: pd.DataFrame, fold_predictions: pd.DataFrame,
                  spec: EnsembleSpec, prior: dict[str, np.ndarray], rule: str,
                  n_resamples: int = bootstrap.N_RESAMPLES) -> pd.DataFrame:
    """The shipped submission, the shipped spec with each other fold average, and every model alone (T = 1,
    its folds combined by the submission's ``rule``), each filled with ``prior`` where it has no row, as
    :func:`lsdc.bootstrap.score_table` (differences to the submission), plus the four terms."""
    row_ids = submission[metric.ROW_ID].astype(str).tolist()
    folds = fold_frames_of(fold_predictions)
    frames = {SHIPPED: submission}
    for other in FOLD_AVERAGES:
        if other != rule and all(m in folds for m in spec.models):
            frames[f"{SHIPPED} with fold_average={other}"] = fill_with_prior(
                row_ids, blend_folds(spec, {m: folds[m] for m in spec.models}, other), prior)
    for m, f in folds.items():
        frames[m] = fill_with_prior(row_ids, blend_folds(single_spec(m), {m: f}, rule), prior)
    table = bootstrap.score_table(solution, frames, reference=SHIPPED, n_resamples=n_resamples)
    terms = pd.DataFrame([{k: metric.score(solution, f)[k] for k in metric.TERM_KEYS} for f in frames.values()])
    return pd.concat([table, terms], axis=1)


def read_labeled_test(data_dir: Path, submission_path: Path, fold_predictions_path: Path, spec: EnsembleSpec,
                 prior: dict[str, np.ndarray], rule: str) -> pd.DataFrame | None:
    """:func:`labeled_test_table` from the files, or None when the data has no test labels or the fold
    predictions were not kept."""
    solution_path = data_dir / schema.TEST_SOLUTION_CSV
    if not (solution_path.is_file() and fold_predictions_path.is_file()):
        return None
    return labeled_test_table(metric.load_solution(solution_path), metric.read_submission(submission_path),
                         pd.read_csv(fold_predictions_path), spec, prior, rule)


def labeled_test_markdown(table: pd.DataFrame) -> str:
    """The labeled test table as markdown, the submission first."""
    lines = ["| predictions | score [95% CI] | vs submission [95% CI] | " + " | ".join(metric.TERM_KEYS) + " |",
             "|---|---|---|" + "---|" * len(metric.TERM_KEYS)]
    for _, r in table.iterrows():
        lines.append(f"| {r.model} | {bootstrap.format_interval(r.score, r.score_lo, r.score_hi, 4)} | "
                     f"{bootstrap.format_interval(r['diff'], r.diff_lo, r.diff_hi, 4, signed=True)} | "
                     + " | ".join(f"{r[k]:.4f}" for k in metric.TERM_KEYS) + " |")
    return "\n".join(lines) + "\n"
