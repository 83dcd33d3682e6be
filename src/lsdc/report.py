"""The paper's evaluation report from saved `paper`-task experiments (Tables 2-4, Figures 8-12).

Everything is recomputed with scikit-learn from each experiment's saved out-of-fold predictions
(``oof_paper.csv``; severe = positive class, predicted severe when p(severe) >= 0.5); parameter counts
and training wall time come from its ``metrics.json``. Figures: confusion matrices and ROC curves per
condition (model against model), a metric bar chart, and per-condition case sheets (Figure 12): sample
crops of each severity, correctly classified and misclassified side by side, with Grad-CAM and the
attention maps of CBAM (spatial), MHSA (attention received per token) and slot attention overlaid.
Each case is explained by the fold checkpoint whose held-out fold contains it.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import INDEX_CSV, load_crop
from lsdc.errors import ConfigError, DataError
from lsdc.gradcam import GradCam
from lsdc.io import atomic_path, write_csv, write_text
from lsdc.models import LssAttentionNet, ModelConfig
from lsdc.synthetic import MARKER, SyntheticConfig
from lsdc.train import COND_INDEX, PAPER_CLASSES, CropDataset, ExperimentConfig, load_checkpoint

__all__ = [
    "ALL",
    "PAPER_VARIANTS",
    "CaseMaps",
    "Experiment",
    "Report",
    "SYNTHETIC_DISCLAIMER",
    "ablation_table",
    "build_report",
    "condition_table",
    "describe_data",
    "error_table",
    "explain",
    "find_experiments",
    "load_experiment",
    "markdown_table",
    "model_table",
    "plot_confusion",
    "plot_roc",
    "prepare_inputs",
    "run_comparison",
    "score",
    "select_cases",
    "variant_config",
]

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_MD = "report.md"
OOF_CSV = "oof_paper.csv"
METRICS_JSON = "metrics.json"
CONFIG_YAML = "config.yaml"
OOF_COLUMNS = ("study_id", "condition", "level", "label", "target", "normal_mild", "severe")
ALL = "All conditions"
METRICS = ("accuracy", "precision", "recall", "f1", "f1_macro", "auc")
PERCENT = ("accuracy", "precision", "recall", "f1", "f1_macro")
BRANCHES = (("cbam", "CBAM"), ("mhsa", "MHSA"), ("slot", "slot attention"))
CLASS_NAMES = (schema.SEVERITIES[0], schema.SEVERITIES[2])   # target 0, 1 of the paper task
THRESHOLD = 0.5
DPI = 100
CONFUSION_CELL_IN = (2.6, 2.4)    # width, height of one confusion matrix
ROC_CELL_IN = (4.4, 4.0)
ROC_COLS = 3
CASE_CELL_IN = 1.9
BAR_SIZE_IN = (11.0, 4.5)
OVERLAY_ALPHA = 0.45
SLOT_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180],
                         [70, 240, 240], [245, 130, 48], [240, 50, 230]], np.float32) / 255.0
SYNTHETIC_DISCLAIMER = ("These numbers were computed on synthetic data and cannot be compared with the "
                        "paper's results.")
# Values the paper states in its text (section 3.3), percent; None where the text does not give one.
PAPER_REPORTED = (
    ("proposed (CBAM + MHSA + slot attention)", 95.2, 94.7, 94.3, 94.5, 10377),
    ("DenseNet201", 93.1, None, None, 92.1, 17649),
    ("ResNet101", 92.5, None, None, 91.4, None),
    ("without CBAM", 92.8, 92.0, None, 91.8, None),
    ("without MHSA", 93.2, None, None, 92.2, None),
    ("without slot attention", 92.9, None, None, 92.0, None),
)


# ----------------------------------------------------------------------------- experiments


@dataclass
class Experiment:
    """One trained `paper`-task experiment: its config, out-of-fold predictions and summary."""

    name: str
    path: Path
    cfg: ExperimentConfig
    preds: pd.DataFrame
    metrics: dict[str, Any]

    @property
    def is_attention(self) -> bool:
        return self.cfg.model.name == "attention"

    @property
    def removed(self) -> tuple[str, ...]:
        """Attention branches switched off (the paper's ablations); empty for the full model."""
        if not self.is_attention:
            return ()
        return tuple(b for b, _ in BRANCHES if not getattr(self.cfg.model, f"use_{b}"))

    @property
    def model_label(self) -> str:
        """e.g. 'attention', 'attention w/o CBAM', 'densenet201'."""
        if not self.is_attention:
            return self.cfg.model.name
        base = "attention" if self.cfg.model.backbone is None else f"attention[{self.cfg.model.backbone}]"
        names = dict(BRANCHES)
        return base + (" w/o " + " + ".join(names[b] for b in self.removed) if self.removed else "")

    @property
    def evaluation(self) -> str:
        n = self.cfg.folds.n_folds
        folds = self.metrics.get("folds", [])
        if self.cfg.train.split == "holdout":
            return f"holdout (fold 0 of {n})"
        return f"OOF {len(folds)}/{n} folds" if len(folds) != n else f"OOF {n} folds"

    def family(self) -> str:
        """Settings shared by a full attention model and its ablations (all but the branch switches)."""
        d = config_mod.to_dict(self.cfg)
        d.pop("name"), d.pop("tag")
        for key in ("use_cbam", "use_mhsa", "use_slot"):
            d["model"].pop(key)
        for key in ("workers", "device"):
            d["train"].pop(key)
        d["crops"].pop("workers")
        d["folds"].pop("train_folds")
        return json.dumps(d, sort_keys=True)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML: {exc}") from exc
    return data if isinstance(data, dict) else {}


def is_paper_experiment(exp_dir: Path) -> bool:
    """Whether ``exp_dir/config.yaml`` exists and says ``train.task: paper``."""
    path = exp_dir / CONFIG_YAML
    return path.is_file() and (_read_config(path).get("train") or {}).get("task") == "paper"


def load_predictions(path: Path) -> pd.DataFrame:
    """A checked ``oof_paper.csv``: the task's columns, known conditions, 0/1 targets, probabilities."""
    if not path.is_file():
        raise DataError(f"experiment {path.parent.name!r}: {path} not found (training has not finished; "
                        "scripts/02_train.py --task paper)")
    df = pd.read_csv(path)
    missing = [c for c in OOF_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}")
    if df.empty:
        raise DataError(f"{path} holds no predictions")
    unknown = sorted(set(df.condition) - set(schema.CONDITIONS))
    if unknown:
        raise DataError(f"{path}: unknown condition {unknown[0]!r}")
    if not df.target.isin([0, 1]).all():
        raise DataError(f"{path}: column 'target' must hold 0 (normal/mild) or 1 (severe)")
    if df[list(PAPER_CLASSES)].isna().any().any():
        raise DataError(f"{path}: empty probabilities")
    return df


def load_experiment(exp_dir: str | Path) -> Experiment:
    """A `paper`-task experiment folder written by ``lsdc.train.run``; DataError naming what is missing."""
    exp_dir = Path(exp_dir)
    name = exp_dir.name
    if not exp_dir.is_dir():
        raise DataError(f"experiment {name!r}: folder {exp_dir} not found")
    cfg_path = exp_dir / CONFIG_YAML
    if not cfg_path.is_file():
        raise DataError(f"experiment {name!r}: {cfg_path} not found")
    try:
        cfg = config_mod.load(ExperimentConfig, cfg_path)
    except ConfigError as exc:
        raise DataError(f"experiment {name!r}: {cfg_path} is not a valid experiment config ({exc})") from exc
    if cfg.train.task != "paper":
        raise DataError(f"experiment {name!r} was trained on task {cfg.train.task!r}, not 'paper' "
                        "(train with scripts/02_train.py --task paper)")
    preds = load_predictions(exp_dir / OOF_CSV)
    metrics_path = exp_dir / METRICS_JSON
    if not metrics_path.is_file():
        raise DataError(f"experiment {name!r}: {metrics_path} not found (training has not finished)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"experiment {name!r}: {metrics_path} is not valid JSON ({exc})") from exc
    return Experiment(name, exp_dir, cfg, preds, metrics)


def find_experiments(output_dir: str | Path, names: Sequence[str] | None = None) -> tuple[list[Experiment], list[str]]:
    """The named experiments, or every `paper`-task folder in ``output_dir`` (sorted by name).

    Returns the experiments and, when searching, the names of `paper`-task folders skipped because
    their training has not finished (no oof_paper.csv or metrics.json).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise DataError(f"output folder {output_dir} not found")
    if names:
        return [load_experiment(output_dir / n) for n in names], []
    found, skipped = [], []
    for d in sorted(p for p in output_dir.iterdir() if p.is_dir()):
        if not is_paper_experiment(d):
            continue
        if not (d / OOF_CSV).is_file() or not (d / METRICS_JSON).is_file():
            log.warning("experiment %s has no %s yet (training unfinished): left out", d.name, OOF_CSV)
            skipped.append(d.name)
            continue
        found.append(load_experiment(d))
    if not found:
        raise DataError(f"no finished paper-task experiment in {output_dir}: train one with "
                        "scripts/02_train.py --task paper, or run scripts/run_paper_comparison.py")
    return found, skipped


def display_names(exps: Sequence[Experiment]) -> dict[str, str]:
    """Legend names: the model label, or the experiment name where two share a label."""
    labels = [e.model_label for e in exps]
    return {e.name: (e.model_label if labels.count(e.model_label) == 1 else e.name) for e in exps}


# ----------------------------------------------------------------------------- scores and tables


def score(df: pd.DataFrame) -> dict[str, float]:
    """Paper metrics of predictions (severe = positive, threshold 0.5 on p(severe)), with scikit-learn.

    precision/recall/f1 are of the severe class; f1_macro averages both classes' F1; auc is NaN with
    one class only.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    y = df.target.to_numpy().astype(int)
    p = df.severe.to_numpy().astype(float)
    pred = (p >= THRESHOLD).astype(int)
    return {
        "n": int(len(y)),
        "severe": int(y.sum()),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "f1_macro": float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)),
        "auc": float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan"),
    }


def _conditions(df: pd.DataFrame) -> list[str]:
    return [c for c in schema.CONDITIONS if c in set(df.condition)]


def model_table(exps: Sequence[Experiment]) -> pd.DataFrame:
    """Table 2: one row per experiment, all conditions pooled, with parameters and training time."""
    rows = []
    for e in exps:
        devices = sorted({str(m.get("device", "")) for m in e.metrics.get("fold_metrics", [])} - {""})
        rows.append({"experiment": e.name, "model": e.model_label, "evaluation": e.evaluation, **score(e.preds),
                     "params": int(e.metrics.get("params", -1)),
                     "train_seconds": float(e.metrics.get("train_seconds", float("nan"))),
                     "device": ",".join(devices)})
    return pd.DataFrame(rows)


def condition_table(exps: Sequence[Experiment]) -> pd.DataFrame:
    """Table 3: one row per condition and experiment."""
    rows = [{"condition": c, "experiment": e.name, "model": e.model_label, **score(e.preds[e.preds.condition == c])}
            for c in _conditions(pd.concat([e.preds for e in exps])) for e in exps
            if c in set(e.preds.condition)]
    return pd.DataFrame(rows)


def ablation_table(exps: Sequence[Experiment]) -> pd.DataFrame:
    """Table 4: attention models sharing all settings but the branch switches, full model first.

    One row per variant and condition (plus all conditions pooled); ``d_accuracy``/``d_f1`` are the
    differences to the full model of the same family (NaN when the family has no full model).
    """
    families: dict[str, list[Experiment]] = {}
    for e in exps:
        if e.is_attention:
            families.setdefault(e.family(), []).append(e)
    rows = []
    order = {b: i for i, (b, _) in enumerate(BRANCHES)}
    for fid, members in enumerate(families.values(), start=1):
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda e: (len(e.removed), [order[b] for b in e.removed], e.name))
        full = next((e for e in members if not e.removed), None)
        for e in members:
            for cond in [ALL, *_conditions(e.preds)]:
                sel = e.preds if cond == ALL else e.preds[e.preds.condition == cond]
                s = score(sel)
                ref: dict[str, float] = {}
                if full is not None:
                    fsel = full.preds if cond == ALL else full.preds[full.preds.condition == cond]
                    ref = score(fsel) if len(fsel) else {}
                rows.append({"family": fid, "variant": e.model_label, "experiment": e.name,
                             "removed": "+".join(e.removed) or "none", "condition": cond, **s,
                             "d_accuracy": s["accuracy"] - ref["accuracy"] if ref else float("nan"),
                             "d_f1": s["f1"] - ref["f1"] if ref else float("nan")})
    cols = ["family", "variant", "experiment", "removed", "condition", "n", "severe", *METRICS, "d_accuracy", "d_f1"]
    return pd.DataFrame(rows, columns=cols)


def error_table(exps: Sequence[Experiment]) -> pd.DataFrame:
    """Misclassified crops per experiment and condition: severe called normal/mild and the reverse."""
    rows = []
    for e in exps:
        for c in _conditions(e.preds):
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


# ----------------------------------------------------------------------------- data


def describe_data(data_dir: str | Path) -> dict[str, Any]:
    """The data folder and whether it is synthetic (it holds the generator's marker file)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} not found: pass --data-dir, the folder the experiments used")
    marker = data_dir / MARKER
    info: dict[str, Any] = {"data_dir": str(data_dir.resolve()), "synthetic": marker.is_file()}
    if marker.is_file():
        try:
            params = json.loads(marker.read_text()).get("params", {})
        except json.JSONDecodeError:
            params = {}
        info.update(train_studies=params.get("train_studies"), seed=params.get("seed"))
    return info


# ----------------------------------------------------------------------------- figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    _plt().close(fig)
    return path


def _short(cond: str) -> str:
    return cond.replace("Neural Foraminal Narrowing", "Foraminal").replace("Stenosis", "Sten.")


def plot_confusion(exps: Sequence[Experiment], path: Path) -> Path:
    """Grid of 2x2 confusion matrices: one row per experiment, one column per condition + all."""
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    names = display_names(exps)
    conds = [*_conditions(pd.concat([e.preds for e in exps])), ALL]
    nrows, ncols = len(exps), len(conds)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * CONFUSION_CELL_IN[0], nrows * CONFUSION_CELL_IN[1]),
                             squeeze=False, layout="constrained")
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
    return _save(fig, path)


def plot_roc(exps: Sequence[Experiment], path: Path) -> Path:
    """ROC curves per condition (+ all pooled), every experiment in each panel, AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    names = display_names(exps)
    conds = [*_conditions(pd.concat([e.preds for e in exps])), ALL]
    ncols = min(ROC_COLS, len(conds))
    nrows = -(-len(conds) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * ROC_CELL_IN[0], nrows * ROC_CELL_IN[1]),
                             squeeze=False, layout="constrained")
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
    return _save(fig, path)


def plot_metric_bars(table2: pd.DataFrame, path: Path) -> Path:
    """Figure 8-like: accuracy, precision, recall, F1 and AUC per model, grouped bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=BAR_SIZE_IN, layout="constrained")
    metrics = ("accuracy", "precision", "recall", "f1", "auc")
    width = 0.8 / max(len(table2), 1)
    labels = table2.model.where(~table2.model.duplicated(keep=False), table2.experiment)
    for i, (label, row) in enumerate(zip(labels, table2.itertuples(index=False))):
        vals = [np.nan_to_num(getattr(row, m)) for m in metrics]
        ax.bar(np.arange(len(metrics)) + i * width - 0.4 + width / 2, vals, width, label=label)
    ax.set_xticks(np.arange(len(metrics)), ["accuracy", "precision", "recall", "F1", "AUC"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (severe = positive)")
    ax.legend(fontsize=8, ncols=min(len(table2), 3))
    return _save(fig, path)


# ----------------------------------------------------------------------------- explanations


@dataclass
class CaseMaps:
    """A crop's explanation, every map at the crop's size (H, W).

    ``gradcam`` and ``cbam`` lie in [0, 1]; ``mhsa`` is the attention each pixel receives (mean over
    heads and query tokens), a distribution summing to 1; ``slots`` (S, H, W) sum to 1 over slots at
    every pixel. ``mhsa_tokens`` keeps the raw weights (heads, N, N), each row summing to 1.
    """

    probs: np.ndarray
    gradcam: np.ndarray
    cbam: np.ndarray | None = None
    mhsa: np.ndarray | None = None
    slots: np.ndarray | None = None
    mhsa_tokens: np.ndarray | None = None


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W), bilinear (a convex combination: ranges and sums over C are kept)."""
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0].cpu().numpy()


def explain(model: nn.Module, x: torch.Tensor, cond: int, k: int) -> CaseMaps:
    """Grad-CAM of the predicted class and, for the attention model, its branches' maps, for one crop."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    with GradCam(model) as gc:
        cam, probs = gc(x, cond, k)
    out = CaseMaps(probs=probs, gradcam=cam)
    if not isinstance(model, LssAttentionNet):
        return out
    with torch.no_grad():
        _, maps = model.forward_with_attention(x)
    if "cbam_spatial" in maps:
        out.cbam = np.clip(_upsample(maps["cbam_spatial"][0], size)[0], 0.0, 1.0)
    if "slot" in maps:
        slots = np.clip(_upsample(maps["slot"][0], size), 0.0, None)
        out.slots = slots / slots.sum(axis=0, keepdims=True)
    if "mhsa" in maps:
        attn = maps["mhsa"][0].float()                      # (heads, N, N)
        h, w = model.head(x).shape[-2:]
        received = attn.mean(dim=(0, 1)).reshape(1, h, w)  # sums to 1 over tokens
        up = np.clip(_upsample(received, size)[0], 0.0, None)
        out.mhsa = up / up.sum()
        out.mhsa_tokens = attn.cpu().numpy()
    return out


def _overlay(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB: a [0, 1] heat map in the jet colour map over a grey crop."""
    import matplotlib

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


def select_cases(exp: Experiment, index: pd.DataFrame, per_cell: int = 1) -> pd.DataFrame:
    """Sample crops per condition, true class and outcome: the most confident correct ones and the
    most confidently misclassified ones (``per_cell`` each), with their crop path."""
    keys = ["study_id", "condition", "level"]
    df = exp.preds.merge(index[[*keys, "path"]].drop_duplicates(keys), on=keys, how="inner")
    df["pred"] = (df.severe >= THRESHOLD).astype(int)
    df["correct"] = df.pred == df.target
    df["p_true"] = np.where(df.target == 1, df.severe, df.normal_mild)
    picks = []
    for cond in _conditions(df):
        for target in (0, 1):
            for correct in (True, False):
                g = df[(df.condition == cond) & (df.target == target) & (df.correct == correct)]
                g = g.sort_values(["p_true", "study_id"], ascending=[not correct, True])
                picks.append(g.head(per_cell))
    return pd.concat(picks, ignore_index=True) if picks else df.head(0)


class CheckpointCache:
    """Fold checkpoints of one experiment, loaded once each; the fold must be the sample's held-out fold."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.models: dict[int, tuple[nn.Module, dict[str, Any]]] = {}

    def get(self, fold: int) -> tuple[nn.Module, dict[str, Any]]:
        if fold not in self.models:
            path = self.exp.path / f"fold{fold}" / "best.pt"
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


def explain_cases(exp: Experiment, output_dir: Path, cases: pd.DataFrame) -> list[CaseResult]:
    """Explain every selected case with the checkpoint of the fold that held its study out."""
    from lsdc.folds import load_folds

    folds = load_folds(output_dir, exp.cfg.folds.n_folds).set_index("study_id").fold
    crops_dir = output_dir / exp.cfg.crops.dirname
    cache = CheckpointCache(exp)
    results = []
    for r in cases.to_dict("records"):
        if r["study_id"] not in folds.index:
            raise DataError(f"study {r['study_id']} of experiment {exp.name!r} has no fold in "
                            f"{output_dir}/folds_{exp.cfg.folds.n_folds}.csv")
        fold = int(folds[r["study_id"]])
        model, meta = cache.get(fold)
        n_slices = exp.cfg.crops.n_slices
        path = crops_dir / r["path"]
        crop = load_crop(path, n_slices)
        table = pd.DataFrame({"path": [str(path)], "cond": [COND_INDEX[r["condition"]]], "target": [r["target"]]})
        x = CropDataset(table, n_slices, np.asarray(meta["mean"]), np.asarray(meta["std"]))[0][0][None]
        maps = explain(model, x, COND_INDEX[r["condition"]], len(meta["classes"]))
        results.append(CaseResult({**r, "fold": fold, "severe_recomputed": float(maps.probs[-1])}, maps, crop))
    return results


def plot_cases(exp_label: str, condition: str, results: Sequence[CaseResult], path: Path) -> Path:
    """Figure 12-like sheet of one condition: a row per true class, correct | misclassified side by
    side, each as crop, Grad-CAM and the attention maps the model has."""
    plt = _plt()
    kinds = ["crop", "Grad-CAM"] + [k for k, attr in (("CBAM spatial", "cbam"), ("MHSA received", "mhsa"),
                                                      ("slots", "slots"))
                                    if any(getattr(r.maps, attr) is not None for r in results)]
    ncols = 2 * len(kinds)
    fig, axes = plt.subplots(2, ncols, figsize=(ncols * CASE_CELL_IN, 2 * CASE_CELL_IN + 0.5), squeeze=False,
                             layout="constrained")
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
    return _save(fig, path)


# ----------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What :func:`build_report` computed and wrote."""

    report_dir: Path
    markdown: Path
    data: dict[str, Any]
    experiments: list[str]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Path]
    cases: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: list[str] = field(default_factory=list)


def default_case_experiments(exps: Sequence[Experiment]) -> list[str]:
    """The full attention models (all three branches), or the first experiment if there is none."""
    full = [e.name for e in exps if e.is_attention and not e.removed]
    return full or [exps[0].name]


def build_report(output_dir: str | Path, data_dir: str | Path, experiments: Sequence[str] | None = None,
                 cases_for: Sequence[str] | None = None, report_dir: str | Path | None = None) -> Report:
    """Compute Tables 2-4 and the figures, write them and ``report.md`` (default: ``output_dir/report``).

    ``experiments``: folder names (default: every finished paper-task experiment). ``cases_for``:
    experiments to draw case sheets for ("all" for every one; default: the full attention models;
    an empty list: none).
    """
    output_dir = Path(output_dir)
    data = describe_data(data_dir)
    exps, skipped = find_experiments(output_dir, experiments)
    by_name = {e.name: e for e in exps}
    if cases_for is None:
        case_names = default_case_experiments(exps)
    elif list(cases_for) == ["all"]:
        case_names = list(by_name)
    else:
        case_names = list(cases_for)
    unknown = [n for n in case_names if n not in by_name]
    if unknown:
        raise DataError(f"experiment {unknown[0]!r} (asked for case sheets) is not among the report's "
                        f"experiments: {', '.join(by_name)}")
    for name in case_names:
        index_path = output_dir / by_name[name].cfg.crops.dirname / INDEX_CSV
        if not index_path.is_file():
            raise DataError(f"experiment {name!r}: crops index {index_path} not found (needed for case sheets)")
    out = Path(report_dir) if report_dir is not None else output_dir / REPORT_DIR
    tables = {"table2_models": model_table(exps), "table3_conditions": condition_table(exps),
              "table4_ablations": ablation_table(exps), "misclassified": error_table(exps)}
    for name, df in tables.items():
        write_csv(df, out / f"{name}.csv")
    figures = {"confusion": plot_confusion(exps, out / "confusion_matrices.png"),
               "roc": plot_roc(exps, out / "roc_curves.png"),
               "bars": plot_metric_bars(tables["table2_models"], out / "metrics_bar.png")}
    case_rows = []
    for name in case_names:
        e = by_name[name]
        index = pd.read_csv(output_dir / e.cfg.crops.dirname / INDEX_CSV, keep_default_na=False)
        results = explain_cases(e, output_dir, select_cases(e, index))
        for cond in _conditions(e.preds):
            slug = schema.CONDITION_INFO[cond].slug
            rs = [r for r in results if r.row["condition"] == cond]
            fig_path = plot_cases(e.model_label, cond, rs, out / f"cases_{name}_{slug}.png")
            figures[f"cases/{name}/{slug}"] = fig_path
            case_rows += [{"experiment": name, "condition": cond, "label": r.row["label"],
                           "outcome": "correct" if r.row["correct"] else "misclassified",
                           "study_id": r.row["study_id"], "fold": r.row["fold"],
                           "p_severe_saved": r.row["severe"], "p_severe_recomputed": r.row["severe_recomputed"],
                           "figure": fig_path.name} for r in rs]
    cases = pd.DataFrame(case_rows)
    write_csv(cases, out / "cases.csv")
    md = render_markdown(output_dir, data, exps, tables, figures, cases, skipped)
    write_text(out / REPORT_MD, md)
    log.info("report written to %s", out / REPORT_MD)
    return Report(out, out / REPORT_MD, data, [e.name for e in exps], tables, figures, cases, skipped)


def render_markdown(output_dir: Path, data: dict[str, Any], exps: Sequence[Experiment],
                    tables: dict[str, pd.DataFrame], figures: dict[str, Path], cases: pd.DataFrame,
                    skipped: Sequence[str]) -> str:
    """The text of report.md."""
    cfg = exps[0].cfg.train
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Paper evaluation report",
        "",
        f"Generated {when} by `scripts/06_paper_report.py` from the experiments in `{output_dir}`.",
        "",
        "## Data",
        "",
        f"- data folder: `{data['data_dir']}`",
        f"- data: synthetic (generator marker `{MARKER}` present, {data.get('train_studies')} training studies, "
        f"seed {data.get('seed')})" if data["synthetic"] else f"- data: real competition data (no `{MARKER}` marker)",
        f"- task: level {cfg.paper_level}, binary {CLASS_NAMES[0]} vs {CLASS_NAMES[1]} "
        f"(moderate: {'dropped' if cfg.paper_moderate == 'drop' else 'counted as severe'}), "
        "one crop per study, condition and level",
        f"- experiments: {', '.join(f'`{e.name}`' for e in exps)}",
    ]
    if skipped:
        lines.append(f"- left out (training unfinished): {', '.join(f'`{s}`' for s in skipped)}")
    lines.append("")
    if data["synthetic"]:
        lines += [f"**{SYNTHETIC_DISCLAIMER}**", ""]
    if len({(e.cfg.train.paper_level, e.cfg.train.paper_moderate, e.cfg.crops.dirname, e.cfg.folds.n_folds)
            for e in exps}) > 1:
        lines += ["Note: the experiments differ in level, moderate handling, crops or folds; their rows are "
                  "not evaluated on the same crops.", ""]
    lines += [
        "All scores are recomputed with scikit-learn from each experiment's `oof_paper.csv` (out-of-fold, or "
        f"held-out, predictions): severe is the positive class, a crop is called severe when p(severe) >= "
        f"{THRESHOLD}; precision, recall and F1 are of the severe class, F1 macro averages both classes' F1, "
        "AUC uses p(severe). Metrics in percent, AUC as a fraction. Parameters and training wall time "
        "(summed over the folds trained) come from `metrics.json`.",
        "",
        "## Table 2: model comparison",
        "",
        markdown_table(tables["table2_models"]),
        "",
        "![metrics](metrics_bar.png)",
        "",
        "## Table 3: per condition",
        "",
        markdown_table(tables["table3_conditions"]),
        "",
        "## Table 4: ablations (attention branches removed)",
        "",
    ]
    t4 = tables["table4_ablations"]
    if t4.empty:
        lines += ["No ablation: no full attention model with a variant that differs only in "
                  "`model.use_cbam` / `model.use_mhsa` / `model.use_slot` among these experiments.", ""]
    else:
        lines += ["Variants sharing every setting but the branch switches; `d_accuracy` and `d_f1` are "
                  "differences to the full model, in percentage points.", "", markdown_table(t4), ""]
    lines += ["## Confusion matrices (Figures 9-10)", "", "![confusion](confusion_matrices.png)", "",
              "## ROC curves (Figure 11)", "", "![roc](roc_curves.png)", "",
              "## Misclassified cases (section 3.4, Figure 12)", "",
              markdown_table(tables["misclassified"]), ""]
    if cases.empty:
        lines += ["No case sheets drawn.", ""]
    else:
        lines += ["Case sheets: per condition, one crop per true class, the most confidently correct (left) and "
                  "the most confidently misclassified (right), explained by the checkpoint of the fold that "
                  "held the study out. Panels: the crop's middle slice; Grad-CAM of the predicted class on the "
                  "last convolutional feature map (scaled to its maximum); CBAM's spatial attention (0-1, "
                  "unscaled); MHSA, the attention each location receives (mean over heads and queries; the "
                  "middle colour is the uniform share, red twice it or more); slot attention, pixels tinted by "
                  "their slots' colours. `p_severe_recomputed` is the checkpoint's probability at report time "
                  "(it should equal the saved one).", "", markdown_table(cases), ""]
        for key, path in figures.items():
            if key.startswith("cases/"):
                lines += [f"![{key}]({path.name})", ""]
    lines += ["## The paper's reported values (for reference)", "",
              "From the paper's text (section 3.3); '-' where the text gives no value."
              + (" Not comparable with the synthetic-data numbers above." if data["synthetic"] else ""), "",
              "| model | accuracy | precision | recall | F1 | train time (s) |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in PAPER_REPORTED]
    return "\n".join(lines) + "\n"



# ----------------------------------------------------------------------------- the comparison


ABLATIONS = {"no_cbam": "use_cbam", "no_mhsa": "use_mhsa", "no_slot": "use_slot"}
BASELINES = ("densenet201", "resnet101")
PAPER_VARIANTS = ("attention", *ABLATIONS, *BASELINES)


def variant_config(base: ExperimentConfig, variant: str, baseline_steps: int | None = None,
                   baseline_weights: dict[str, str] | None = None) -> ExperimentConfig:
    """The `paper`-task config of one comparison variant, derived from an attention-model ``base``.

    "attention": the base itself; "no_cbam"/"no_mhsa"/"no_slot": one branch switched off, tag suffixed;
    a baseline name: that timm model with default settings (local weights from ``baseline_weights``),
    ``train.max_steps_per_epoch`` capped at ``baseline_steps`` when given.
    """
    if variant not in PAPER_VARIANTS:
        raise ConfigError(f"unknown comparison variant {variant!r} (use {', '.join(PAPER_VARIANTS)})")
    if base.model.name != "attention":
        raise ConfigError(f"the comparison needs a config of the attention model (model.name: attention), "
                          f"not {base.model.name!r}")
    cfg = copy.deepcopy(base)
    cfg.train.task = "paper"
    if base.name:
        cfg.name = f"{base.name}_{variant}"
    if variant in ABLATIONS:
        setattr(cfg.model, ABLATIONS[variant], False)
        cfg.tag = "_".join(t for t in (base.tag, variant) if t)
    elif variant in BASELINES:
        weights = (baseline_weights or {}).get(variant)
        cfg.model = ModelConfig(name=variant, in_chans=base.model.in_chans, pretrained_path=weights)
        if baseline_steps is not None:
            cfg.train.max_steps_per_epoch = baseline_steps
    return cfg


def prepare_inputs(data_dir: str | Path, output_dir: str | Path, cfg: ExperimentConfig,
                   synthetic: SyntheticConfig | None = None) -> dict[str, bool]:
    """Synthetic data if ``data_dir`` is empty, then the folds and (if missing) the crops of ``cfg``.

    Returns which of them were made now. A non-empty data folder without train.csv is refused.
    """
    from lsdc.crops import prepare
    from lsdc.folds import prepare_folds
    from lsdc.synthetic import generate

    data_dir, output_dir = Path(data_dir), Path(output_dir)
    made = {"data": False, "crops": False}
    if not (data_dir / schema.TRAIN_CSV).is_file():
        if data_dir.is_dir() and any(data_dir.iterdir()) and not (data_dir / MARKER).is_file():
            raise DataError(f"{data_dir} holds no {schema.TRAIN_CSV}: is --data-dir the competition folder?")
        syn = synthetic or SyntheticConfig(workers=max(cfg.crops.workers, 1))
        log.info("%s is empty: generating %d synthetic training studies", data_dir, syn.train_studies)
        generate(data_dir, syn)
        made["data"] = True
    prepare_folds(data_dir, output_dir, cfg.folds.n_folds, cfg.folds.seed)
    if not (output_dir / cfg.crops.dirname / INDEX_CSV).is_file():
        prepare(data_dir, output_dir, cfg.crops)
        made["crops"] = True
    return made


def run_comparison(base: ExperimentConfig, data_dir: str | Path, output_dir: str | Path,
                   variants: Sequence[str] = PAPER_VARIANTS, baseline_steps: int | None = None,
                   baseline_weights: dict[str, str] | None = None,
                   synthetic: SyntheticConfig | None = None) -> tuple[Report, pd.DataFrame]:
    """Train every variant on the paper task (finished ones are kept), then build the report.

    Returns the report and a table of each variant's experiment and wall time in this run.
    """
    from lsdc.train import run

    configs = [variant_config(base, v, baseline_steps, baseline_weights) for v in variants]
    prepare_inputs(data_dir, output_dir, configs[0], synthetic)
    rows = []
    for variant, cfg in zip(variants, configs):
        log.info("== %s: experiment %s", variant, cfg.experiment)
        t0 = time.perf_counter()
        summary = run(cfg, data_dir, output_dir)
        rows.append({"variant": variant, "experiment": cfg.experiment, "wall_seconds": time.perf_counter() - t0,
                     "train_seconds": summary["train_seconds"]})
    report = build_report(output_dir, data_dir, [c.experiment for c in configs])
    return report, pd.DataFrame(rows)
