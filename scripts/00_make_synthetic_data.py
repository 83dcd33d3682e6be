#!/usr/bin/env python
"""Generate the synthetic stand-in for the competition data (the project's default dataset).

Writes exactly the competition's files (train.csv, train_label_coordinates.csv, *_series_descriptions.csv,
sample_submission.csv, train_images/, test_images/) plus test_solution.csv with the test studies' labels.
It refuses to write into a folder holding data it did not generate, so a real download is never touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lsdc import cli
from lsdc.synthetic import SyntheticConfig, generate


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write (default: --data-dir, the competition folder)")
    parser.add_argument("--train-studies", type=int, default=None, help="number of training studies")
    parser.add_argument("--test-studies", type=int, default=None, help="number of test studies")
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same data)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    for key in ("train_studies", "test_studies", "seed", "workers"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    args.overrides = overrides
    cfg = cli.load_config(SyntheticConfig, args)
    out = args.out or args.data_dir
    log = cli.setup_logging(args.output_dir / "logs" / "00_make_synthetic_data.log", args.log_level)
    log.info("writing %d train + %d test synthetic studies (seed %d) to %s",
             cfg.train_studies, cfg.test_studies, cfg.seed, out)
    info = generate(out, cfg)
    log.info("done: %s", {k: v for k, v in info.items() if k != "params"})
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
