#!/usr/bin/env python
"""Train a model over the CV folds on the ROI crops and score its out-of-fold predictions.

Task `competition` (default): 3 severities per crop, weighted cross-entropy, outputs/<experiment>/oof.csv in
submission format scored with the official metric. Task `paper`: the paper's protocol (L4/L5, normal/mild vs
severe), accuracy/precision/recall/F1/AUC. Each fold keeps best.pt, metrics.json and epochs.csv; an
interrupted run resumes when rerun with the same command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lsdc import cli
from lsdc.experiment import ExperimentConfig
from lsdc.train import train_experiment


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--model", default=None,
                        help="attention, densenet201, resnet101 or any timm name (model.name); "
                             "without --config, configs/<model>.yaml is used when it exists")
    parser.add_argument("--folds", default=None, help="comma-separated folds to train, e.g. 0,1 (default all)")
    parser.add_argument("--task", choices=["competition", "paper"], default=None, help="train.task")
    args = parser.parse_args(argv)
    if args.config is None:
        guess = Path("configs") / f"{args.model or 'attention'}.yaml"
        args.config = guess if guess.is_file() else None
    if args.model:
        args.overrides.insert(0, f"model.name={args.model}")
    if args.folds:
        args.overrides.append(f"folds.train_folds=[{args.folds}]")
    if args.task:
        args.overrides.append(f"train.task={args.task}")
    cfg = cli.load_config(ExperimentConfig, args)
    log = cli.setup_logging(args.output_dir / cfg.experiment / "train.log", args.log_level)
    log.info("config %s, experiment %s", args.config, cfg.experiment)
    summary = train_experiment(cfg, args.data_dir, args.output_dir)
    keys = ("oof_score", "prior_score", "rows_from_prior", "paper_metrics", "train_seconds")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
