#!/usr/bin/env python
"""Out-of-fold scores from localised points: how much the test-time localiser costs each model.

Each training study is placed by the localiser fold that did not see it (oof_points.csv, written by
03_train_localizer.py), cropped like a test study, and classified by each experiment's model of the same
fold (with the test-time views of --set tta=[vflip,lrflip], as prediction would). Prints, per model, the
official score from localised points next to the usual OOF from annotated points, each with its 95% interval,
and their paired difference; writes <experiment>/oof_localized.csv (04_ensemble.py --set
oof_file=oof_localized.csv fits on them) and <output-dir>/localized_oof_scores.csv. Models: --set
experiments=[a,b] (default: every experiment with all its folds trained).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lsdc import cli
from lsdc.inference import PredictConfig
from lsdc.localized_oof import SCORES_CSV, cost_markdown, localized_oof


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="folder with the localiser and the experiments (default: --output-dir)")
    args = parser.parse_args(argv)
    cfg = cli.load_config(PredictConfig, args)
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / "logs" / "07_localized_oof.log", args.log_level)
    table = localized_oof(args.data_dir, args.weights_dir or args.output_dir, cfg, args.output_dir / SCORES_CSV)
    sys.stdout.write(cost_markdown(table))
    log.info("localised OOF scores written to %s", args.output_dir / SCORES_CSV)
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
