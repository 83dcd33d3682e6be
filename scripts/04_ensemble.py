#!/usr/bin/env python
"""Compare the experiments' out-of-fold predictions and fit their ensemble with the official metric.

Reads every <output-dir>/<experiment>/oof.csv (or those named by --experiments) and train.csv, fits
per-group model weights and temperatures on the shared OOF rows (never worse than the best single
model), and writes <output-dir>/oof_table.csv, oof_table.md and ensemble.json (the spec that
05_predict.py applies to test predictions). Prints the markdown table on stdout.
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
