#!/usr/bin/env python
"""Compare the experiments' out-of-fold predictions and choose their ensemble out of fold with the official metric.

Reads every <output-dir>/<experiment>/oof.csv (or those named by --experiments; --set
oof_file=oof_localized.csv for the OOF at held-out localiser points) and train.csv, and chooses what to
ship on rows nothing was fitted on: each model as it is, with fitted temperatures, and blends grown by
forward selection, each judged nested (every fold blended with what was fitted on the other folds; needs
the experiments' folds_<k>.csv). Writes <output-dir>/oof_table.csv and oof_table.md (every model and the
nested ensemble with 95% intervals and paired differences), ensemble.json (the choice, with the reason and
every candidate's score; 05_predict.py applies it) and ensemble_oof.csv (its nested OOF). Prints the table.
"""

from __future__ import annotations

import dataclasses
import sys

from lsdc import cli
from lsdc.data import load_train_labels
from lsdc.ensemble import EnsembleConfig, build_ensemble, table_markdown
from lsdc.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--experiments", default=None,
                        help="comma-separated experiment folders to ensemble (default: every one with an oof.csv)")
    parser.add_argument("--no-temperature", action="store_true",
                        help="fit the weights only (temperature 1 in every group)")
    args = parser.parse_args(argv)
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / "logs" / "04_ensemble.log", args.log_level)
    cfg = cli.load_config(EnsembleConfig, args)
    if args.experiments is not None:
        names = [n.strip() for n in args.experiments.split(",") if n.strip()]
        if not names:
            raise ConfigError(f"--experiments {args.experiments!r} names no experiment")
        cfg = dataclasses.replace(cfg, experiments=names)
    if args.no_temperature:
        cfg = dataclasses.replace(cfg, temperature=False)
    log.info("ensembling in %s with %s", args.output_dir, cfg)
    train = load_train_labels(args.data_dir)
    table, _ = build_ensemble(args.output_dir, train, cfg)
    sys.stdout.write(table_markdown(table))
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
