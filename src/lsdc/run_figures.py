"""Pictures of every run: per experiment its training curves, and the OOF comparison as a bar chart.

- ``<experiment>/curves.png``: per fold the loss per epoch of the training crops, of the validation studies
  that choose the epoch and of the held-out fold (log scale, the chosen epoch marked), and the official
  score per epoch of the held-out fold (``fold_score`` in the fold's ``epochs.csv``; ``val_score`` in older
  files, where the held-out fold chose; a file with neither is drawn without that panel), with the
  experiment's OOF score and the class prior's for reference.
- ``<outputs>/oof_chart.png``: the OOF comparison table(s) the ensemble step writes (``oof_table.csv`` at
  annotated points, ``oof_localized_table.csv`` at held-out localiser points) as bars: one panel per score
  (the official score with its 95% interval, and its four terms), one row per model and the ensemble
  (judged out of fold; the row each ensemble step chose marked), annotated and localised side by side, each bar labelled
  with its value.

Drawn at the end of :func:`lsdc.pipeline.run_pipeline` and by ``scripts/plot_runs.py``; a figure whose
inputs have not changed is kept (:mod:`lsdc.stamps`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, FuncFormatter

from lsdc.ensemble import CHOSEN, ENSEMBLE, TERMS, table_names
from lsdc.experiment import EPOCHS_CSV, LOCALIZED_OOF_CSV, METRICS_JSON, OOF_CSV
from lsdc.plotting import save_figure
from lsdc.stamps import file_state, is_current, write_stamp

log = logging.getLogger(__name__)

CURVES_PNG = "curves.png"
OOF_CHART_PNG = "oof_chart.png"
FIGURES_VERSION = 2            # bump when the drawing changes, so kept figures are redrawn
CURVE_PANEL_IN = (6.0, 4.2)    # width, height of one curves panel
CHART_PANEL_W_IN = 3.4         # width of one OOF chart panel
CHART_ROW_IN = 0.42            # height per model row of the OOF chart
CHART_EXTRA_IN = 1.5           # title, axis labels and legend
TERM_TITLES = {"score": "official score", "spinal": "spinal", "foraminal": "foraminal",
               "subarticular": "subarticular", "any_severe_spinal": "any severe spinal"}
OOF_SOURCES = (("annotated points", OOF_CSV, "#9ecae1"), ("held-out localiser points", LOCALIZED_OOF_CSV, "#08519c"))


def read_epochs(exp_dir: str | Path) -> dict[int, pd.DataFrame]:
    """fold -> its epochs.csv (folds without one are left out)."""
    out = {}
    for path in sorted(Path(exp_dir).glob(f"fold*/{EPOCHS_CSV}")):
        suffix = path.parent.name.removeprefix("fold")
        if suffix.isdigit():
            df = pd.read_csv(path)
            if len(df):
                out[int(suffix)] = df
    return dict(sorted(out.items()))


def _metrics(exp_dir: Path) -> dict:
    try:
        return json.loads((exp_dir / METRICS_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _score_of(metrics: dict, key: str) -> float | None:
    value = (metrics.get(key) or {}).get("score")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def held_out_score(df: pd.DataFrame) -> pd.Series | None:
    """The held-out fold's official score per epoch: ``fold_score``, or ``val_score`` in files written when
    the held-out fold chose the epoch itself; None when the file has neither."""
    for key in ("fold_score", "val_score"):
        if key in df and df[key].notna().any():
            return df[key]
    return None


def has_scores(epochs: dict[int, pd.DataFrame]) -> bool:
    """Whether the epochs files carry the official score per epoch (older ones do not)."""
    return any(held_out_score(df) is not None for df in epochs.values())


def _minor_label(value: float, wide: bool) -> str:
    """Minor tick labels on the log loss axis: every one on a narrow range, only 2, 3 and 5 (x 10^k) on a
    wide one."""
    if value <= 0:
        return ""
    lead = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
    return f"{value:.2g}" if not wide or lead in (2, 3, 5) else ""


def plot_curves(exp_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """``exp_dir``'s training curves (see the module doc) as a PNG; None when no fold has an epochs.csv."""
    exp_dir = Path(exp_dir)
    epochs = read_epochs(exp_dir)
    if not epochs:
        return None
    metrics = _metrics(exp_dir)
    scores = has_scores(epochs)
    ncols = 2 if scores else 1
    fig = Figure(figsize=(ncols * CURVE_PANEL_IN[0], CURVE_PANEL_IN[1]), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(epochs))]
    ax = axes[0]
    for colour, (fold, df) in zip(colours, epochs.items()):
        ax.plot(df.epoch, df.train_loss, "-", color=colour, marker=".", label=f"fold {fold} train")
        ax.plot(df.epoch, df.val_loss, "--", color=colour, marker=".", label=f"fold {fold} validation")
        if "fold_loss" in df and not np.allclose(df.fold_loss, df.val_loss, equal_nan=True):
            ax.plot(df.epoch, df.fold_loss, ":", color=colour, marker=".", label=f"fold {fold} held out")
        best = df.loc[df.val_loss.idxmin()]
        ax.plot([best.epoch], [best.val_loss], "*", color=colour, markersize=13, markeredgecolor="black")
    ax.set_yscale("log")
    losses = pd.concat([pd.concat([df.train_loss, df.val_loss, df.get("fold_loss", df.val_loss)])
                        for df in epochs.values()]).to_numpy(float)
    losses = losses[np.isfinite(losses) & (losses > 0)]
    wide = len(losses) > 0 and losses.max() / losses.min() > 3
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _minor_label(v, wide)))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted cross-entropy (log scale)")
    ax.set_title("loss (solid: train, dashed: validation studies, dotted: held-out fold;\n"
                 "star: the epoch the validation studies chose)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    if scores:
        ax = axes[1]
        for colour, (fold, df) in zip(colours, epochs.items()):
            values = held_out_score(df)
            if values is not None:
                ax.plot(df.epoch, values, "-", color=colour, marker="o", markersize=4, label=f"fold {fold}")
        for key, style, label in (("oof_score", "k:", "OOF (all folds)"), ("prior_score", "r-.", "class prior")):
            value = _score_of(metrics, key)
            if value is not None:
                ax.axhline(value, linestyle=style[1:], color=style[0], linewidth=1.2, label=f"{label} {value:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("official score (lower is better)")
        ax.set_title("official score of the held-out fold", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for a in axes:
        a.xaxis.get_major_locator().set_params(integer=True)
    oof = _score_of(metrics, "oof_score")
    note = "" if scores else "\n(no val_score in epochs.csv: the score per epoch was not recorded)"
    fig.suptitle(f"{exp_dir.name}" + (f": OOF score {oof:.4f}" if oof is not None else "") + note, fontsize=11)
    return save_figure(fig, Path(path) if path else exp_dir / CURVES_PNG)


def read_oof_tables(output_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Label -> comparison table, for the tables the ensemble step wrote (annotated, localised)."""
    out = {}
    for label, oof_file, _ in OOF_SOURCES:
        path = Path(output_dir) / table_names(oof_file)[0]
        if path.is_file():
            out[label] = pd.read_csv(path)
    return out


def plot_oof_chart(output_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """The OOF comparison as bars (see the module doc); None when the ensemble step wrote no table."""
    output_dir = Path(output_dir)
    tables = read_oof_tables(output_dir)
    if not tables:
        return None
    # Rows: the models of the last (localised, when present) table, best first; the ensemble rows on top.
    order = list(next(reversed(tables.values())).sort_values("score", kind="stable").model)
    for t in tables.values():
        order += [m for m in t.model if m not in order]
    order = [m for m in order if str(m).startswith(ENSEMBLE)] + [m for m in order if not str(m).startswith(ENSEMBLE)]
    terms = [t for t in TERMS if any(t in df for df in tables.values())]
    n = len(order)
    fig = Figure(figsize=(len(terms) * CHART_PANEL_W_IN, n * CHART_ROW_IN + CHART_EXTRA_IN), layout="constrained")
    axes = fig.subplots(1, len(terms), sharey=True, squeeze=False)[0]
    colours = {label: colour for label, _, colour in OOF_SOURCES}
    height = 0.8 / len(tables)
    y = np.arange(n)
    for ax, term in zip(axes, terms):
        top = 0.0
        for i, (label, df) in enumerate(tables.items()):
            values = df.set_index("model")[term].reindex(order).to_numpy(float) if term in df else np.full(n, np.nan)
            pos = y - 0.4 + height * (i + 0.5)
            ax.barh(pos, np.nan_to_num(values), height, color=colours[label], label=label)
            ends = values
            if term == "score" and {"score_lo", "score_hi"} <= set(df.columns):
                lo, hi = (df.set_index("model")[c].reindex(order).to_numpy(float) for c in ("score_lo", "score_hi"))
                ax.errorbar(values, pos, xerr=[values - lo, hi - values], fmt="none", ecolor="black",
                            elinewidth=0.8, capsize=2)
                ends = hi
            for p, v, e in zip(pos, values, ends):
                if np.isfinite(v):
                    ax.text(e if np.isfinite(e) else v, p, f" {v:.3f}", va="center", ha="left", fontsize=7)
            top = max(top, float(np.nanmax(ends)) if np.isfinite(ends).any() else 0.0)
        ax.set_xlim(0, max(top, 0.1) * 1.3)
        ax.set_title(TERM_TITLES.get(term, term), fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    chosen = {m for df in tables.values() if CHOSEN in df for m in df.model[df[CHOSEN].astype(bool)]}
    axes[0].set_yticks(y, [f"{m} (chosen)" if m in chosen else m for m in order], fontsize=9)
    axes[0].invert_yaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(tables), fontsize=9,
               frameon=False)
    fig.suptitle("out-of-fold official score per model and group (weighted log loss, lower is better; bars on the "
                 "score: 95% interval, bootstrap over studies; (chosen): what an ensemble step chose)", fontsize=11)
    return save_figure(fig, Path(path) if path else output_dir / OOF_CHART_PNG)


def experiment_dirs(output_dir: str | Path) -> list[Path]:
    """Folders under ``output_dir`` with at least one ``fold*/epochs.csv``."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return [d for d in sorted(output_dir.iterdir()) if d.is_dir() and any(d.glob(f"fold*/{EPOCHS_CSV}"))]


def _keep_or_draw(out: Path, inputs: list, draw) -> Path | None:
    stamp = {"version": FIGURES_VERSION, "inputs": inputs}
    if is_current(out, stamp):
        return out
    drawn = draw()
    if drawn is not None:
        write_stamp(drawn, stamp)
    return drawn


def draw_run_figures(output_dir: str | Path, experiments: Sequence[str] | None = None) -> list[Path]:
    """Every experiment's curves (``experiments``: only these folder names) and the OOF chart; figures
    whose inputs have not changed are kept. Returns the PNGs (drawn or kept)."""
    output_dir = Path(output_dir)
    dirs = experiment_dirs(output_dir)
    if experiments is not None:
        dirs = [d for d in dirs if d.name in set(experiments)]
    out = []
    for d in dirs:
        inputs = [file_state(f) for f in [*sorted(d.glob(f"fold*/{EPOCHS_CSV}")), d / METRICS_JSON]]
        png = _keep_or_draw(d / CURVES_PNG, inputs, lambda d=d: plot_curves(d))
        if png is not None:
            out.append(png)
    tables = [output_dir / table_names(f)[0] for _, f, _ in OOF_SOURCES]
    png = _keep_or_draw(output_dir / OOF_CHART_PNG, [file_state(t) for t in tables],
                        lambda: plot_oof_chart(output_dir))
    if png is not None:
        out.append(png)
    log.info("run figures: %s", ", ".join(str(p.relative_to(output_dir)) for p in out) or "none")
    return out
