"""The report's figures, drawn with matplotlib's object API (no pyplot state): confusion matrices, ROC
curves, the metric bar chart, and case sheets of crops with their Grad-CAM and attention overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from lsdc.paper import CLASS_NAMES, THRESHOLD
from lsdc.plotting import save_figure
from lsdc.report.cases import CaseResult
from lsdc.report.experiments import PaperExperiment, conditions_of, display_names
from lsdc.report.tables import ALL

CONFUSION_CELL_IN = (2.6, 2.4)    # width, height of one confusion matrix
ROC_CELL_IN = (4.4, 4.0)
ROC_COLS = 3
CASE_CELL_IN = 1.9
BAR_SIZE_IN = (11.0, 4.5)
OVERLAY_ALPHA = 0.45
SLOT_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180],
                         [70, 240, 240], [245, 130, 48], [240, 50, 230]], np.float32) / 255.0


def _short(cond: str) -> str:
    return cond.replace("Neural Foraminal Narrowing", "Foraminal").replace("Stenosis", "Sten.")


def plot_confusion(exps: Sequence[PaperExperiment], path: Path) -> Path:
    """Grid of 2x2 confusion matrices: one row per experiment, one column per condition + all."""
    names = display_names(exps)
    conds = [*conditions_of(pd.concat([e.preds for e in exps])), ALL]
    nrows, ncols = len(exps), len(conds)
    fig = Figure(figsize=(ncols * CONFUSION_CELL_IN[0], nrows * CONFUSION_CELL_IN[1]), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    ticks = list(CLASS_NAMES)
    for i, e in enumerate(exps):
        for j, c in enumerate(conds):
            ax = axes[i, j]
            g = e.preds if c == ALL else e.preds[e.preds.condition == c]
            cm = confusion_matrix(g.target, (g.severe >= THRESHOLD).astype(int), labels=[0, 1])
            rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
            for (r, k), v in np.ndenumerate(cm):
                ax.text(k, r, f"{v}\n{100 * rate[r, k]:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if rate[r, k] > 0.5 else "black")
            ax.set_xticks([0, 1], ticks, fontsize=7)
            ax.set_yticks([0, 1], ticks, fontsize=7)
            ax.set_title(f"{names[e.name]}\n{_short(c)}", fontsize=8)
            if j == 0:
                ax.set_ylabel("true", fontsize=8)
            if i == nrows - 1:
                ax.set_xlabel("predicted", fontsize=8)
    return save_figure(fig, path)


def plot_roc(exps: Sequence[PaperExperiment], path: Path) -> Path:
    """ROC curves per condition (+ all pooled), every experiment in each panel, AUC in the legend."""
    names = display_names(exps)
    conds = [*conditions_of(pd.concat([e.preds for e in exps])), ALL]
    ncols = min(ROC_COLS, len(conds))
    nrows = -(-len(conds) // ncols)
    fig = Figure(figsize=(ncols * ROC_CELL_IN[0], nrows * ROC_CELL_IN[1]), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(conds):]:
        ax.axis("off")
    for ax, c in zip(axes.ravel(), conds):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for e in exps:
            g = e.preds if c == ALL else e.preds[e.preds.condition == c]
            if g.target.nunique() < 2:
                ax.plot([], [], label=f"{names[e.name]} (AUC n/a: one class only)")
                continue
            fpr, tpr, _ = roc_curve(g.target, g.severe)
            ax.plot(fpr, tpr, lw=1.5, label=f"{names[e.name]} (AUC {roc_auc_score(g.target, g.severe):.3f})")
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate (severe)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_metric_bars(table2: pd.DataFrame, path: Path) -> Path:
    """Figure 8-like: accuracy, precision, recall, F1 and AUC per model, grouped bars, with the 95% interval
    of the metrics that have one."""
    fig = Figure(figsize=BAR_SIZE_IN, layout="constrained")
    ax = fig.subplots()
    metrics = ("accuracy", "precision", "recall", "f1", "auc")
    width = 0.8 / max(len(table2), 1)
    labels = table2.model.where(~table2.model.duplicated(keep=False), table2.experiment)
    for i, (label, row) in enumerate(zip(labels, table2.itertuples(index=False))):
        vals = np.array([np.nan_to_num(getattr(row, m)) for m in metrics])
        x = np.arange(len(metrics)) + i * width - 0.4 + width / 2
        ax.bar(x, vals, width, label=label)
        lo = np.array([getattr(row, f"{m}_lo", np.nan) for m in metrics], dtype=float)
        hi = np.array([getattr(row, f"{m}_hi", np.nan) for m in metrics], dtype=float)
        has = np.isfinite(lo) & np.isfinite(hi)
        if has.any():
            ax.errorbar(x[has], vals[has], yerr=[vals[has] - lo[has], hi[has] - vals[has]], fmt="none",
                        ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(np.arange(len(metrics)), ["accuracy", "precision", "recall", "F1", "AUC"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (severe = positive)")
    ax.legend(fontsize=8, ncols=min(len(table2), 3))
    return save_figure(fig, path)



def _overlay(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB: a [0, 1] heat map in the jet colour map over a grey crop."""
    base = np.repeat(grey[..., None].astype(np.float32) / 255.0, 3, axis=2)
    colour = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return np.clip((1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * colour, 0.0, 1.0)


def mhsa_display(mhsa: np.ndarray) -> np.ndarray:
    """MHSA received attention for display: 0.5 is the uniform share (1 / pixels), 1 twice it or more."""
    return np.clip(mhsa * mhsa.size / 2.0, 0.0, 1.0)


def _slot_overlay(grey: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """RGB: each pixel tinted by its slots' colours weighted by the masks (which sum to 1)."""
    base = np.repeat(grey[..., None].astype(np.float32) / 255.0, 3, axis=2)
    colours = SLOT_COLOURS[np.arange(len(slots)) % len(SLOT_COLOURS)]
    tint = np.einsum("shw,sc->hwc", slots, colours)
    return np.clip((1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * tint, 0.0, 1.0)



def plot_cases(exp_label: str, condition: str, results: Sequence[CaseResult], path: Path) -> Path:
    """Figure 12-like sheet of one condition: a row per true class, correct | misclassified side by
    side, each as crop, Grad-CAM and the attention maps the model has."""
    kinds = ["crop", "Grad-CAM"] + [k for k, attr in (("CBAM spatial", "cbam"), ("MHSA received", "mhsa"),
                                                      ("slots", "slots"))
                                    if any(getattr(r.maps, attr) is not None for r in results)]
    ncols = 2 * len(kinds)
    fig = Figure(figsize=(ncols * CASE_CELL_IN, 2 * CASE_CELL_IN + 0.5), layout="constrained")
    axes = fig.subplots(2, ncols, squeeze=False)
    fig.suptitle(f"{exp_label}: {condition} (left: correct, right: misclassified)", fontsize=10)
    for ti, target in enumerate((0, 1)):
        for oi, correct in enumerate((True, False)):
            hit = [r for r in results if r.row["target"] == target and bool(r.row["correct"]) == correct]
            for ki, kind in enumerate(kinds):
                ax = axes[ti, oi * len(kinds) + ki]
                ax.set_xticks([])
                ax.set_yticks([])
                if not hit:
                    ax.axis("off")
                    if ki == 0:
                        ax.text(0.5, 0.5, f"no {'correct' if correct else 'misclassified'}\n{CLASS_NAMES[target]}",
                                ha="center", va="center", fontsize=8, transform=ax.transAxes)
                    continue
                r = hit[0]
                grey = r.crop[..., r.crop.shape[-1] // 2]
                img: np.ndarray | None = None
                if kind == "crop":
                    img = grey
                    ax.set_title(f"{CLASS_NAMES[target]} {'ok' if correct else 'WRONG'}\n"
                                 f"p(severe) {r.row['severe']:.2f}", fontsize=7)
                elif kind == "Grad-CAM":
                    img = _overlay(grey, r.maps.gradcam)
                elif kind == "CBAM spatial" and r.maps.cbam is not None:
                    img = _overlay(grey, r.maps.cbam)
                elif kind == "MHSA received" and r.maps.mhsa is not None:
                    img = _overlay(grey, mhsa_display(r.maps.mhsa))
                elif kind == "slots" and r.maps.slots is not None:
                    img = _slot_overlay(grey, r.maps.slots)
                if img is not None:
                    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255 if img.ndim == 2 else 1)
                if kind != "crop":
                    ax.set_title(kind, fontsize=7)
    return save_figure(fig, path)

