#!/usr/bin/env python
"""Cut the training ROI crops (one PNG per labeled study/condition/level) and write the CV folds.

Reads train.csv, train_label_coordinates.csv and train_images/; writes
<output-dir>/crops_<size>px_<n>sl/ (PNGs, index.csv, errors.csv, contact_sheet.png) and <output-dir>/folds.csv.
Uses the `crops` and `folds` sections of the experiment config. Rerunning keeps valid crops already written.
"""

from __future__ import annotations

import sys

from lsdc import cli
from lsdc.crops import prepare
from lsdc.experiment import ExperimentConfig
from lsdc.folds import prepare_folds


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config="configs/attention.yaml")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (crops.workers)")
    args = parser.parse_args(argv)
    if args.workers is not None:
        args.overrides.append(f"crops.workers={args.workers}")
    cfg = cli.load_config(ExperimentConfig, args)
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / "logs" / "01_prepare_crops.log", args.log_level)
    folds = prepare_folds(args.data_dir, args.output_dir, cfg.folds.n_folds, cfg.folds.seed)
    log.info("folds: %s", folds)
    crops_dir = prepare(args.data_dir, args.output_dir, cfg.crops)
    log.info("crops: %s (contact sheet: %s)", crops_dir, crops_dir / "contact_sheet.png")
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
