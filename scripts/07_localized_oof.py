#!/usr/bin/env python
"""Out-of-fold scores from localised points: how much the test-time localiser costs each model.

Each training study is placed by the localiser fold that did not see it (oof_points.csv, written by
03_train_localizer.py), cropped like a test study, and classified by each experiment's model of the same
fold; the ensemble blends them. Prints, per model and for the ensemble, the official score and its parts
from localised points next to the usual OOF from annotated points, and writes
<output-dir>/localized_oof.csv (the ensemble's rows) and localized_oof_scores.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lsdc import cli
from lsdc.inference import PredictConfig
from lsdc.localized_oof import localized_oof
from lsdc.pipeline import LOCALIZED_OOF_TABLE


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="folder with the localiser, the experiments and ensemble.json (default: --output-dir)")
    args = parser.parse_args(argv)
    cfg = cli.load_config(PredictConfig, args)
    log = cli.setup_logging(args.output_dir / "logs" / "07_localized_oof.log", args.log_level)
    table = localized_oof(args.data_dir, args.weights_dir or args.output_dir, cfg,
                          args.output_dir / LOCALIZED_OOF_TABLE)
    cols = ["model"] + [f"{kind}_{k}" for k in ("score", "spinal", "foraminal", "subarticular", "any_severe_spinal")
                        for kind in ("localised", "annotated")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([str(r["model"])] + [f"{r[c]:.4f}" for c in cols[1:]]) + " |"
              for _, r in table.iterrows()]
    sys.stdout.write("\n".join(lines) + "\n")
    log.info("localised OOF written to %s", args.output_dir / LOCALIZED_OOF_TABLE)
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
