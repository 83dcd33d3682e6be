"""The paper's tables (2: models, 3: conditions, 4: ablations; misclassified crops), recomputed with
scikit-learn from each experiment's saved predictions, and their markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lsdc.models.attention import BRANCHES
from lsdc.paper import THRESHOLD, paper_scores
from lsdc.report.experiments import PaperExperiment, conditions_of

ALL = "All conditions"
METRICS = ("accuracy", "precision", "recall", "f1", "f1_macro", "auc")
PERCENT = ("accuracy", "precision", "recall", "f1", "f1_macro")


def model_table(exps: Sequence[PaperExperiment]) -> pd.DataFrame:
    """Table 2: one row per experiment, all conditions pooled, with parameters and training time."""
    rows = []
    for e in exps:
        devices = sorted({str(m.get("device", "")) for m in e.metrics.get("fold_metrics", [])} - {""})
        rows.append({"experiment": e.name, "model": e.model_label, "evaluation": e.evaluation, **paper_scores(e.preds),
                     "params": int(e.metrics.get("params", -1)),
                     "train_seconds": float(e.metrics.get("train_seconds", float("nan"))),
                     "device": ",".join(devices)})
    return pd.DataFrame(rows)


def condition_table(exps: Sequence[PaperExperiment]) -> pd.DataFrame:
    """Table 3: one row per condition and experiment."""
    rows = [{"condition": c, "experiment": e.name, "model": e.model_label,
             **paper_scores(e.preds[e.preds.condition == c])}
            for c in conditions_of(pd.concat([e.preds for e in exps])) for e in exps
            if c in set(e.preds.condition)]
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
        for e in members:
            for cond in [ALL, *conditions_of(e.preds)]:
                sel = e.preds if cond == ALL else e.preds[e.preds.condition == cond]
                s = paper_scores(sel)
                ref: dict[str, float] = {}
                if full is not None:
                    fsel = full.preds if cond == ALL else full.preds[full.preds.condition == cond]
                    ref = paper_scores(fsel) if len(fsel) else {}
                rows.append({"family": fid, "variant": e.model_label, "experiment": e.name,
                             "removed": "+".join(e.removed) or "none", "condition": cond, **s,
                             "d_accuracy": s["accuracy"] - ref["accuracy"] if ref else float("nan"),
                             "d_f1": s["f1"] - ref["f1"] if ref else float("nan")})
    cols = ["family", "variant", "experiment", "removed", "condition", "n", "severe", *METRICS, "d_accuracy", "d_f1"]
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
    """A GitHub markdown table: metrics in percent (1 decimal) except AUC (3 decimals), NaN as n/a."""
    def fmt(col: str, v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            if np.isnan(v):
                return "n/a"
            if col in PERCENT:
                return f"{100 * v:.1f}"
            if col in ("d_accuracy", "d_f1"):
                return f"{100 * v:+.1f}"
            if col == "auc":
                return f"{v:.3f}"
            if col == "train_seconds":
                return f"{v:.1f}"
            return f"{v:.4g}"
        if col == "params" and isinstance(v, (int, np.integer)):
            return f"{int(v):,}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(c, v) for c, v in zip(df.columns, row)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)
