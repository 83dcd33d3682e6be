"""The OOF comparison table: every model (and the ensemble, judged out of fold) on the same rows, with the
official score, its 95% interval and each model's paired difference to the best (:mod:`lsdc.bootstrap`),
the score's terms, and per condition accuracy, macro-F1 and AUC."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from lsdc import bootstrap, metric, schema
from lsdc.ensemble.frames import ROW_ID, SEV, align_oofs, model_frame, solution_for
from lsdc.ensemble.spec import UNKNOWN_KIND
from lsdc.errors import DataError

log = logging.getLogger(__name__)

NESTED = "ensemble (nested)"       # the ensemble with each fold blended by what was fitted on the other folds
ENSEMBLE = "ensemble"              # the ensemble row's kind, and the table's column marking it
CHOSEN = "chosen"                  # the table's column marking what its ensemble step chose to ship
SCORE = metric.SCORE_KEY
TERMS: tuple[str, ...] = (SCORE, *metric.TERM_KEYS)
METRICS: tuple[str, ...] = ("acc", "f1", "auc")


def _condition_label(condition: str) -> str:
    """Short column prefix of a condition: its group, with the side when it has one."""
    info = schema.CONDITION_INFO[condition]
    return f"{info.side}_{info.group}" if info.side else info.group


def _ovr_macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro AUC over the classes present; NaN with fewer than 2.

    With all classes present this is sklearn's ``roc_auc_score(multi_class='ovr')``; with two it is
    the mean of the same per-class binary AUCs (sklearn refuses a class absent from ``y``).
    """
    classes = np.unique(y)
    if len(classes) < 2:
        return float("nan")
    if len(classes) == probs.shape[1]:
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in classes]))


def _condition_metrics(solution: pd.DataFrame, df: pd.DataFrame) -> dict[str, float]:
    """Per condition: accuracy, macro-F1 (argmax vs label) and OVR macro AUC on the labeled rows."""
    ids = solution[ROW_ID].astype(str)
    probs = df.set_index(ROW_ID).loc[ids.to_numpy(), SEV].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    y = solution[SEV].to_numpy().argmax(axis=1)
    conditions = np.array([schema.parse_row_id(r)[1] for r in ids], dtype=object)
    out: dict[str, float] = {}
    for condition in schema.CONDITIONS:
        label = _condition_label(condition)
        mask = conditions == condition
        if not mask.any():
            out.update({f"{label}_{k}": float("nan") for k in METRICS})
            continue
        pred = probs[mask].argmax(axis=1)
        out[f"{label}_acc"] = float(accuracy_score(y[mask], pred))
        out[f"{label}_f1"] = float(f1_score(y[mask], pred, average="macro", zero_division=0))
        out[f"{label}_auc"] = _ovr_macro_auc(y[mask], probs[mask])
    return out


def comparison_table(
    oofs: Mapping[str, pd.DataFrame],
    labels: pd.DataFrame,
    *,
    ensemble: pd.DataFrame | None = None,
    kinds: Mapping[str, str] | None = None,
    chosen: str | None = None,
    n_resamples: int = bootstrap.N_RESAMPLES,
    seed: int = bootstrap.SEED,
) -> pd.DataFrame:
    """One row per model (and the ensemble, if given), sorted by official score, on the shared OOF rows.

    ``ensemble``: the ensemble's OOF predictions judged out of fold (nested), listed as :data:`NESTED`.
    ``chosen``: the model name (or :data:`NESTED`) this table's ensemble step chose to ship, marked in the
    ``chosen`` column. Columns: model, kind, ensemble, chosen, the official score with its 95% interval (``score_lo``,
    ``score_hi``) and its paired difference to the best row (``diff``, ``diff_lo``, ``diff_hi``, ``vs``), the
    four terms, then per condition ``<condition>_acc``, ``_f1``, ``_auc``. ``labels``: train.csv-shaped frame
    or scoring-format solution. All rows are scored on the same studies, resampled together.
    """
    aligned = align_oofs(oofs)
    first = next(iter(aligned.values()))
    solution = solution_for(labels, first[ROW_ID].tolist())
    frames: dict[str, tuple[str, bool, pd.DataFrame]] = {
        m: ((kinds or {}).get(m, UNKNOWN_KIND), False, model_frame(df)) for m, df in aligned.items()}
    if ensemble is not None:
        covered = set(ensemble[ROW_ID].astype(str))
        kept = solution[ROW_ID].astype(str).isin(covered)
        if not kept.all():
            log.warning("the ensemble's OOF covers %d of the %d labeled rows: the table scores those only",
                        int(kept.sum()), len(solution))
            solution = solution[kept].reset_index(drop=True)
        if solution.empty:
            raise DataError("the ensemble's OOF predictions cover none of the rows the experiments share")
        frames[NESTED] = (ENSEMBLE, True, ensemble)
    intervals = bootstrap.score_table(solution, {n: f for n, (_, _, f) in frames.items()},
                                      n_resamples=n_resamples, seed=seed).set_index("model")
    rows = []
    for name, (kind, is_ens, df) in frames.items():
        result = metric.score(solution, df)
        rows.append({"model": name, "kind": kind, ENSEMBLE: is_ens, CHOSEN: name == chosen,
                     SCORE: result[SCORE], **{k: intervals.loc[name, k] for k in bootstrap.COLUMNS},
                     **{k: result[k] for k in metric.TERM_KEYS}, **_condition_metrics(solution, df)})
    return pd.DataFrame(rows).sort_values(SCORE, kind="stable").reset_index(drop=True)


def _cell(value: Any, decimals: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"
    return str(value)


def table_markdown(table: pd.DataFrame) -> str:
    """The comparison table as markdown: the score with its 95% interval, the paired difference to the best
    row with its interval, the terms to 4 decimals, other metrics to 3; the ensemble in bold, the chosen
    row marked."""
    has_ci = "score_lo" in table.columns
    skip = {ENSEMBLE, CHOSEN, *bootstrap.COLUMNS, *((SCORE,) if has_ci else ())}
    rest = [c for c in table.columns if c not in skip and c not in ("model", "kind")]
    head = ["model", "kind"]
    if has_ci:
        head += ["score [95% CI]", f"vs best ({table.vs.iloc[0]}) [95% CI]"]
    columns = head + rest
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        name = f"**{row['model']}**" if bool(row.get(ENSEMBLE, False)) else str(row["model"])
        if bool(row.get(CHOSEN, False)):
            name += " (chosen)"
        cells = [name, str(row["kind"])]
        if has_ci:
            cells += [bootstrap.format_interval(row[SCORE], row.score_lo, row.score_hi, 4),
                      bootstrap.format_interval(row["diff"], row.diff_lo, row.diff_hi, 4, signed=True)]
        cells += [_cell(row[c], 4 if c in TERMS else 3) for c in rest]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(table: pd.DataFrame) -> str:
    """The comparison table's scores only: the official score with its interval, the paired difference to
    the best row, the four terms (the per-condition metrics stay in the full table)."""
    lines = ["| model | kind | score [95% CI] | vs best [95% CI] | " + " | ".join(metric.TERM_KEYS) + " |",
             "|---|---|---|---|" + "---|" * len(metric.TERM_KEYS)]
    for _, r in table.iterrows():
        name = f"**{r.model}**" if bool(r.get(ENSEMBLE, False)) else str(r.model)
        name += " (chosen)" if bool(r.get(CHOSEN, False)) else ""
        lines.append(f"| {name} | {r.kind} | {bootstrap.format_interval(r[SCORE], r.score_lo, r.score_hi, 4)} | "
                     f"{bootstrap.format_interval(r['diff'], r.diff_lo, r.diff_hi, 4, signed=True)} (vs {r.vs}) | "
                     + " | ".join(f"{r[k]:.4f}" for k in metric.TERM_KEYS) + " |")
    return "\n".join(lines) + "\n"
