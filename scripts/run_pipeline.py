#!/usr/bin/env python
"""The whole pipeline in one command: data (the synthetic default if --data-dir holds none), crops, folds,
localiser, every configured model over the folds, OOF ensemble, test predictions and the submission, then the
run's figures (<experiment>/curves.png, oof_chart.png).

`--config configs/pipeline_smoke.yaml` runs it end to end on 2 CPU cores in about a quarter of an hour. Every step
resumes, so rerunning after an interruption continues where it stopped.
"""

from __future__ import annotations

import sys

from lsdc import cli
from lsdc.pipeline import PipelineConfig, run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config="configs/pipeline.yaml")
    args = parser.parse_args(argv)
    cfg = cli.load_config(PipelineConfig, args)
    log = cli.setup_logging(args.output_dir / "logs" / "run_pipeline.log", args.log_level)
    result = run_pipeline(cfg, args.data_dir, args.output_dir)
    localised = result["oof_table"] != result["annotated_table"]
    if localised:
        print("OOF from crops at annotated points:")
        print(result["annotated_table"].read_text())
        print("OOF from crops at held-out localiser points (what test rows see; the ensemble is fitted on it):")
    print(result["oof_table"].read_text())
    print("localiser, held out (annotated points):")
    print("| group | median error (mm) | slice accuracy | within 10 mm | placed |")
    print("|---|---|---|---|---|")
    for group, m in result["localizer_metrics"].get("per_group", {}).items():
        print(f"| {group} | {m['median_error_mm']:.2f} | {m['slice_accuracy']:.3f} | {m['within_10mm']:.3f} "
              f"| {m['located']:.3f} |")
    print(f"localiser OOF median error: {result['localizer_median_error_mm']:.2f} mm")
    nested = result["ensemble_nested_score"]
    print(f"ensemble OOF score ({'localised' if localised else 'annotated'} points): "
          f"{result['ensemble_oof_score']:.4f} in sample"
          + (f", {nested:.4f} nested (weights fitted on the other folds)" if nested is not None else ""))
    print(f"step times (s): {result['times']}")
    print("figures: " + ", ".join(str(p) for p in result["figures"]))
    print(f"submission: {result['submission']}")
    log.info("pipeline finished: %s", result["submission"])
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
