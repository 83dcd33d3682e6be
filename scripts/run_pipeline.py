#!/usr/bin/env python
"""The whole pipeline in one command: data (the synthetic default if --data-dir holds none), crops, folds,
localiser, every configured model over the folds, OOF ensemble, test predictions and the submission, then the
run's figures (<experiment>/curves.png, oof_chart.png).

`--config configs/pipeline_smoke.yaml` runs it end to end on 2 CPU cores in about a quarter of an hour. Every step
resumes, so rerunning after an interruption continues where it stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from lsdc import cli
from lsdc.ensemble import summary_markdown
from lsdc.inference import REPORT_CSV, provenance_markdown
from lsdc.labeled_test import labeled_test_markdown
from lsdc.localized_oof import cost_markdown, read_cost_table
from lsdc.pipeline import PipelineConfig, run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config="configs/pipeline.yaml")
    args = parser.parse_args(argv)
    cfg = cli.load_config(PipelineConfig, args)
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / "logs" / "run_pipeline.log", args.log_level)
    result = run_pipeline(cfg, args.data_dir, args.output_dir)
    localized = result["oof_table"] != result["annotated_table"]
    print("Scores are the official weighted log loss (lower is better) with 95% intervals from a paired "
          "bootstrap over studies; 'vs best' is each row's difference to the best row on the same resamples.")
    if localized:
        print("\nOOF from crops at annotated points:")
        print(summary_markdown(pd.read_csv(result["annotated_table"])))
        print("What localisation costs each model (held-out localiser points against annotated points):")
        print(cost_markdown(read_cost_table(result["localization_cost"])))
        print("OOF from crops at held-out localiser points (what test rows see; the ensemble is chosen on it):")
    print(summary_markdown(pd.read_csv(result["oof_table"])))
    print(f"(with per-condition accuracy, F1 and AUC: {result['oof_table_md']})")
    spec = result["spec"]
    print(f"shipped: {spec.shipped}")
    print(f"its OOF score, judged on rows nothing was fitted on: {spec.nested_score['score']:.4f}"
          + (f" (on the rows it was fitted on: {spec.in_sample_score['score']:.4f}, optimistic)"
             if spec.fitted else ""))
    if result["test_scores"] is not None:
        print("\nOn the labeled test studies (test_solution.csv):")
        print(labeled_test_markdown(result["test_scores"]))
    print("localiser, held out (annotated points):")
    print("| group | median error (mm) | slice accuracy | within 10 mm | placed |")
    print("|---|---|---|---|---|")
    for group, m in result["localizer_metrics"].get("per_group", {}).items():
        print(f"| {group} | {m['median_error_mm']:.2f} | {m['slice_accuracy']:.3f} | {m['within_10mm']:.3f} "
              f"| {m['located']:.3f} |")
    print(f"localiser OOF median error: {result['localizer_median_error_mm']:.2f} mm")
    print(f"step times (s): {result['times']}")
    print("figures: " + ", ".join(str(p) for p in result["figures"]))
    print(f"submission: {result['submission']}")
    print(f"where its rows come from (every row in {Path(result['submission']).with_name(REPORT_CSV)}):")
    print(provenance_markdown(result["provenance"]))
    log.info("pipeline finished: %s", result["submission"])
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
