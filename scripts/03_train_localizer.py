#!/usr/bin/env python
"""Train the test-time localiser (level points, slices, foramen and subarticular points) with the CV folds.

Writes <output-dir>/<name>/localizer.pt (fold heatmap models + learned offsets), oof_points.csv and metrics.json
(out-of-fold error in mm and slice accuracy per condition). Needs the folds of 01_prepare_crops.py.
"""

from __future__ import annotations

import json
import sys

from lsdc import cli
from lsdc.localize import LocalizerExperiment, train_localizer


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config="configs/localizer.yaml")
    args = parser.parse_args(argv)
    exp = cli.load_config(LocalizerExperiment, args)
    cli.hold_outputs(args.output_dir)   # one run per output folder
    cli.setup_logging(args.output_dir / "logs" / "03_train_localizer.log", args.log_level)
    metrics = train_localizer(exp, args.data_dir, args.output_dir)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
