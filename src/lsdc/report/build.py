"""The paper's evaluation report from saved `paper`-task experiments (Tables 2-4, Figures 8-12).

Everything is recomputed with scikit-learn from each experiment's saved out-of-fold predictions
(``oof_paper.csv``; severe = positive class, predicted severe when p(severe) >= 0.5); parameter counts
and training wall time come from its ``metrics.json``. Figures: confusion matrices and ROC curves per
condition (model against model), a metric bar chart, and per-condition case sheets (Figure 12): sample
crops of each severity, correctly classified and misclassified side by side, with Grad-CAM and the
attention maps of CBAM (spatial), MHSA (attention received per token) and slot attention overlaid.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lsdc import schema
from lsdc.crops import INDEX_CSV
from lsdc.errors import DataError
from lsdc.io import write_csv, write_text
from lsdc.paper import CLASS_NAMES, THRESHOLD
from lsdc.report.cases import explain_cases, select_cases
from lsdc.report.experiments import PaperExperiment, conditions_of, find_paper_experiments
from lsdc.report.figures import plot_cases, plot_confusion, plot_metric_bars, plot_roc
from lsdc.report.tables import ablation_table, condition_table, error_table, markdown_table, model_table
from lsdc.synthetic import MARKER

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_MD = "report.md"
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


def default_case_experiments(exps: Sequence[PaperExperiment]) -> list[str]:
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
    exps, skipped = find_paper_experiments(output_dir, experiments)
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
        for cond in conditions_of(e.preds):
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


def render_markdown(output_dir: Path, data: dict[str, Any], exps: Sequence[PaperExperiment],
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
        "AUC uses p(severe). Metrics in percent, AUC as a fraction; accuracy, F1 and AUC with their 95% interval "
        "in brackets (percentile bootstrap over studies, 2000 resamples). In Table 2, `d_*` is the paired "
        "difference to the full attention model on the same resampled studies. Parameters and training wall "
        "time (summed over the folds trained) come from `metrics.json`.",
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
        lines += ["Variants sharing every setting but the branch switches; `d_accuracy`, `d_f1` (percentage "
                  "points) and `d_auc` are differences to the full model, each with the 95% interval of the "
                  "paired difference (the same resampled studies for both): an interval that holds 0 means "
                  "this split cannot tell the variant from the full model.", "", markdown_table(t4), ""]
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


