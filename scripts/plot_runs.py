#!/usr/bin/env python
"""Draw the pictures of every run in the output folder: per experiment its training curves (loss and the
official score per epoch and fold, <experiment>/curves.png) and the OOF comparison as a bar chart
(oof_chart.png, annotated and localised side by side). run_pipeline.py draws them at its end; this script
draws them for any output folder (e.g. after 02_train.py and 04_ensemble.py run by hand). Figures whose
inputs have not changed are kept.
"""

from __future__ import annotations

import sys

from lsdc import cli
from lsdc.run_figures import draw_run_figures


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--experiments", nargs="+", default=None, metavar="NAME",
                        help="only these experiment folders (default: every folder with fold*/epochs.csv)")
    args = parser.parse_args(argv)
    cli.setup_logging(args.output_dir / "logs" / "plot_runs.log", args.log_level)
    figures = draw_run_figures(args.output_dir, args.experiments)
    if not figures:
        print(f"nothing to draw in {args.output_dir}: no fold*/epochs.csv and no OOF table")
    for path in figures:
        print(path)
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
