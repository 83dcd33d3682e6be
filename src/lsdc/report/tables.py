"""The paper's tables (2: models, 3: conditions, 4: ablations; misclassified crops), recomputed with
scikit-learn from each experiment's saved predictions, and their markdown.

Accuracy, F1 and AUC come with 95% intervals (``<metric>_lo``, ``<metric>_hi``) from a bootstrap over
studies; differences to the full attention model (``d_<metric>``) are paired: the same resampled studies
for both models, so the interval says whether the difference is more than the luck of the split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lsdc import bootstrap
from lsdc.models.attention import BRANCHES
from lsdc.paper import INTERVAL_METRICS, THRESHOLD, paper_scores, resampled_paper_scores
from lsdc.report.experiments import PaperExperiment, conditions_of

ALL = "All conditions"
METRICS = ("accuracy", "precision", "recall", "f1", "f1_macro", "auc")
PERCENT = ("accuracy", "precision", "recall", "f1", "f1_macro")
DIFF_COLUMNS = tuple(f"d_{m}{s}" for m in INTERVAL_METRICS for s in ("", "_lo", "_hi"))


def intervals(frames: dict[str, pd.DataFrame], reference: str | None = None,
              n_resamples: int = bootstrap.N_RESAMPLES, seed: int = bootstrap.SEED) -> dict[str, dict[str, float]]:
    """Per frame of predictions: the 95% interval of each of :data:`INTERVAL_METRICS` over resampled studies
    (``<metric>_lo``, ``<metric>_hi``), and with ``reference`` the paired difference to it (``d_<metric>``
    with ``d_<metric>_lo``, ``d_<metric>_hi``), every frame on the same resamples; NaN differences for a
    frame of other studies than the reference's (a difference would mix two test sets)."""
    studies = np.unique(np.concatenate([f.study_id.to_numpy() for f in frames.values()]))
    counts = bootstrap.resample_counts(len(studies), n_resamples, seed)
    samples = {k: resampled_paper_scores(f, studies, counts) for k, f in frames.items()}
    points = {k: paper_scores(f) for k, f in frames.items()}
    same = {k: reference is not None and set(f.study_id) == set(frames[reference].study_id) for k, f in frames.items()}
    out: dict[str, dict[str, float]] = {}
    for k in frames:
        row: dict[str, float] = {}
        for m in INTERVAL_METRICS:
            lo, hi = bootstrap.interval(samples[k][m])
            row.update({f"{m}_lo": float(lo), f"{m}_hi": float(hi)})
            if reference is not None and not same[k]:   # other studies: no paired difference
                row.update({f"d_{m}": np.nan, f"d_{m}_lo": np.nan, f"d_{m}_hi": np.nan})
            elif reference is not None:
                dlo, dhi = bootstrap.interval(samples[k][m] - samples[reference][m])
                row.update({f"d_{m}": points[k][m] - points[reference][m], f"d_{m}_lo": float(dlo),
                            f"d_{m}_hi": float(dhi)})
        out[k] = row
    return out


def full_model(exps: Sequence[PaperExperiment]) -> PaperExperiment | None:
    """The first full attention model (all three branches) among ``exps``: what the others are compared to."""
    return next((e for e in exps if e.is_attention and not e.removed), None)


def model_table(exps: Sequence[PaperExperiment]) -> pd.DataFrame:
    """Table 2: one row per experiment, all conditions pooled, with intervals, the paired difference to the
    full attention model (when there is one), parameters and training time."""
    full = full_model(exps)
    ci = intervals({e.name: e.preds for e in exps}, full.name if full else None)
    rows = []
    for e in exps:
        devices = sorted({str(m.get("device", "")) for m in e.metrics.get("fold_metrics", [])} - {""})
        rows.append({"experiment": e.name, "model": e.model_label, "evaluation": e.evaluation, **paper_scores(e.preds),
                     **ci[e.name], "params": int(e.metrics.get("params", -1)),
                     "train_seconds": float(e.metrics.get("train_seconds", float("nan"))),
                     "device": ",".join(devices)})
    return pd.DataFrame(rows)


def condition_table(exps: Sequence[PaperExperiment]) -> pd.DataFrame:
    """Table 3: one row per condition and experiment, with intervals over that condition's studies."""
    rows = []
    for c in conditions_of(pd.concat([e.preds for e in exps])):
        frames = {e.name: e.preds[e.preds.condition == c] for e in exps if c in set(e.preds.condition)}
        ci = intervals(frames)
        rows += [{"condition": c, "experiment": e.name, "model": e.model_label, **paper_scores(frames[e.name]),
                  **ci[e.name]} for e in exps if e.name in frames]
    return pd.DataFrame(rows)


def ablation_table(exps: Sequence[PaperExperiment]) -> pd.DataFrame:
    """Table 4: attention models sharing all settings but the branch switches, full model first.

    One row per variant and condition (plus all conditions pooled); ``d_accuracy``/``d_f1`` are the
    differences to the full model of the same family (NaN when the family has no full model).
    """
    families: dict[str, list[PaperExperiment]] = {}
    for e in exps:
        if e.is_attention:
            families.setdefault(e.family(), []).append(e)
    rows = []
    order = {b: i for i, b in enumerate(BRANCHES)}
    for fid, members in enumerate(families.values(), start=1):
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda e: (len(e.removed), [order[b] for b in e.removed], e.name))
        full = next((e for e in members if not e.removed), None)
        for cond in [ALL, *conditions_of(pd.concat([e.preds for e in members]))]:
            frames = {e.name: (e.preds if cond == ALL else e.preds[e.preds.condition == cond]) for e in members}
            frames = {k: f for k, f in frames.items() if len(f)}
            ref = full.name if full is not None and full.name in frames else None
            ci = intervals(frames, ref)
            for e in members:
                if e.name not in frames:
                    continue
                d = {k: ci[e.name].get(k, float("nan")) for k in DIFF_COLUMNS}
                rows.append({"family": fid, "variant": e.model_label, "experiment": e.name,
                             "removed": "+".join(e.removed) or "none", "condition": cond,
                             **paper_scores(frames[e.name]), **d})
    cols = ["family", "variant", "experiment", "removed", "condition", "n", "severe", *METRICS, *DIFF_COLUMNS]
    return pd.DataFrame(rows, columns=cols)


def error_table(exps: Sequence[PaperExperiment]) -> pd.DataFrame:
    """Misclassified crops per experiment and condition: severe called normal/mild and the reverse."""
    rows = []
    for e in exps:
        for c in conditions_of(e.preds):
            g = e.preds[e.preds.condition == c]
            pred = (g.severe >= THRESHOLD).astype(int)
            rows.append({"experiment": e.name, "condition": c, "n": len(g),
                         "severe_as_normal_mild": int(((g.target == 1) & (pred == 0)).sum()),
                         "normal_mild_as_severe": int(((g.target == 0) & (pred == 1)).sum())})
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table: metrics in percent (1 decimal) except AUC (3 decimals), NaN as n/a; a metric
    with ``<metric>_lo``/``<metric>_hi`` columns shows its 95% interval in its own cell."""
    def number(col: str, v: float) -> str:
        base = col.removeprefix("d_")
        if col.startswith("d_"):
            return f"{v:+.3f}" if base == "auc" else f"{100 * v:+.1f}"
        if col in PERCENT:
            return f"{100 * v:.1f}"
        if col == "auc":
            return f"{v:.3f}"
        if col == "train_seconds":
            return f"{v:.1f}"
        return f"{v:.4g}"

    def fmt(col: str, v: Any, row: pd.Series) -> str:
        if isinstance(v, (float, np.floating)):
            if np.isnan(v):
                return "n/a"
            text = number(col, v)
            lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
            if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
                text += f" [{number(col, lo)}, {number(col, hi)}]"
            return text
        if col == "params" and isinstance(v, (int, np.integer)):
            return f"{int(v):,}"
        return str(v).replace("|", "\\|")

    shown = [c for c in df.columns if not (c.endswith(("_lo", "_hi")) and c[:-3] in df.columns)]
    lines = ["| " + " | ".join(map(str, shown)) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(fmt(c, row[c], row) for c in shown) + " |" for _, row in df.iterrows()]
    return "\n".join(lines)
