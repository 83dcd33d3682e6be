#!/usr/bin/env python
"""Write the paper's evaluation report (Tables 2-4, confusion matrices, ROC curves, case sheets).

Reads every `paper`-task experiment in --output-dir (or those named by --experiments): their
oof_paper.csv, metrics.json, config.yaml and fold checkpoints; writes <output-dir>/report/ with report.md,
the tables as CSV and the figures as PNG. --data-dir only tells the report which data the experiments ran
on (a synthetic folder is marked, and its numbers are flagged as not comparable with the paper's).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lsdc import cli
from lsdc.report import build_report, markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--experiments", nargs="+", default=None, metavar="NAME",
                        help="experiment folders to report (default: every paper-task experiment in --output-dir)")
    parser.add_argument("--cases", nargs="*", default=None, metavar="NAME",
                        help="experiments to draw case sheets (Grad-CAM, attention maps) for; 'all' for every one; "
                             "no name for none (default: the full attention models)")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="where to write the report (default: <output-dir>/report)")
    args = parser.parse_args(argv)
    if args.config is not None or args.overrides:
        parser.error("the report reads each experiment's own config.yaml; --config/--set do not apply")
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / "logs" / "06_paper_report.log", args.log_level)
    report = build_report(args.output_dir, args.data_dir, args.experiments, args.cases, args.report_dir)
    log.info("experiments: %s", ", ".join(report.experiments))
    print(markdown_table(report.tables["table2_models"]))
    print(f"report: {report.markdown}")
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
