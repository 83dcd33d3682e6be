#!/usr/bin/env python
"""Train a model over the CV folds on the ROI crops and score its out-of-fold predictions.

Task `competition` (default): 3 severities per crop, weighted cross-entropy, outputs/<experiment>/oof.csv in
submission format scored with the official metric. Task `paper`: the paper's protocol (L4/L5, normal/mild vs
severe), accuracy/precision/recall/F1/AUC. Each fold keeps best.pt, metrics.json and epochs.csv; an
interrupted run resumes when rerun with the same command.

Several GPUs: `--devices 0,1` trains the folds concurrently, one process per GPU (fold k on the k-th device
mod n); `torchrun --nproc_per_node N scripts/02_train.py ...` trains each fold with DistributedDataParallel
over N GPUs (only rank 0 writes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lsdc import cli
from lsdc.errors import ConfigError
from lsdc.experiment import ExperimentConfig
from lsdc.train import train_experiment, train_on_devices


def parse_devices(text: str) -> list[str]:
    """'0,1' -> ['cuda:0', 'cuda:1']; names ('cpu', 'cuda:2') pass through."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--devices {text!r}: give device numbers or names, e.g. 0,1")
    return [f"cuda:{t}" if t.isdigit() else t for t in names]


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--model", default=None,
                        help="attention, densenet201, resnet101 or any timm name (model.name); "
                             "without --config, configs/<model>.yaml is used when it exists")
    parser.add_argument("--folds", default=None, help="comma-separated folds to train, e.g. 0,1 (default all)")
    parser.add_argument("--task", choices=["competition", "paper"], default=None, help="train.task")
    parser.add_argument("--devices", default=None,
                        help="train the folds concurrently, one process per device: 0,1 (GPUs) or cpu,cpu")
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
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / cfg.experiment / "train.log", args.log_level)
    log.info("config %s, experiment %s", args.config, cfg.experiment)
    if args.devices:
        summary = train_on_devices(cfg, args.data_dir, args.output_dir, parse_devices(args.devices))
    else:
        summary = train_experiment(cfg, args.data_dir, args.output_dir)
    if not summary:   # a torchrun rank other than 0
        return 0
    keys = ("oof_score", "prior_score", "rows_from_prior", "paper_metrics", "train_seconds")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
