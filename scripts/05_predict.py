#!/usr/bin/env python
"""Predict the test studies: localise every level, crop, run every model and fold, blend, write the submission.

Reads test_series_descriptions.csv, test_images/ and (if present) sample_submission.csv from --data-dir, and the
trained localiser, experiments, priors and ensemble.json from --weights-dir (default: --output-dir). Writes exactly
the sample submission's rows in its order (25 per test study without it). Weights are only ever read locally.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lsdc import cli
from lsdc.inference import PredictConfig, predict_submission


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="folder with localizer/, the experiments and ensemble.json (default: --output-dir)")
    parser.add_argument("--submission", type=Path, default=Path("submission/submission.csv"),
                        help="where to write the submission CSV")
    parser.add_argument("--tta", nargs="*", metavar="VIEW", default=None,
                        help="average with these test-time views (lsdc.tta: vflip, lrflip); alone: vflip, as "
                             "before views had names (same as --set tta=[vflip])")
    args = parser.parse_args(argv)
    if args.tta is not None:
        args.overrides.append(f"tta=[{','.join(args.tta or ['vflip'])}]")
    cfg = cli.load_config(PredictConfig, args)
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / "logs" / "05_predict.log", args.log_level)
    sub = predict_submission(args.data_dir, args.weights_dir or args.output_dir, args.submission, cfg)
    log.info("submission: %s (%d rows)", args.submission, len(sub))
    print(args.submission)
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
