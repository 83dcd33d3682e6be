#!/usr/bin/env python
"""Run the paper's whole comparison in one command, then write its report.

Trains, on the paper task (L4/L5, normal/mild vs severe), the full attention model, its three ablations
(without CBAM, MHSA, slot attention) and the DenseNet201 and ResNet101 baselines, all from one base config
(--config, an attention-model config; --set overrides apply to every variant). Missing inputs are made
first: synthetic data when --data-dir is empty, the folds, and the crops. Finished experiments are kept, so
a rerun resumes. Ends with scripts/06_paper_report.py's report in <output-dir>/report/.
"""

from __future__ import annotations

import sys

from lsdc import cli
from lsdc.comparison import BASELINES, PAPER_VARIANTS, run_comparison
from lsdc.errors import ConfigError
from lsdc.experiment import ExperimentConfig
from lsdc.report import markdown_table
from lsdc.synthetic import SyntheticConfig


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config="configs/attention.yaml")
    parser.add_argument("--variants", nargs="+", default=list(PAPER_VARIANTS), choices=PAPER_VARIANTS,
                        metavar="VARIANT", help=f"variants to train, of {', '.join(PAPER_VARIANTS)}")
    parser.add_argument("--baseline-steps", type=int, default=None,
                        help="cap the baselines' training steps per epoch (train.max_steps_per_epoch), "
                             "e.g. 2 for a CPU smoke run")
    parser.add_argument("--baseline-weights", action="append", default=[], metavar="MODEL=PATH",
                        help="local pretrained weights of a baseline, e.g. densenet201=weights/densenet201.pth")
    parser.add_argument("--train-studies", type=int, default=None,
                        help="training studies to generate when --data-dir is empty (synthetic default: 200)")
    args = parser.parse_args(argv)
    weights = {}
    for item in args.baseline_weights:
        model, sep, path = item.partition("=")
        if not sep or not path or model not in BASELINES:
            raise ConfigError(f"--baseline-weights {item!r} must look like MODEL=PATH with MODEL one of "
                              f"{', '.join(BASELINES)}")
        weights[model] = path
    if args.baseline_steps is not None and args.baseline_steps < 1:
        raise ConfigError("--baseline-steps must be at least 1")
    base = cli.load_config(ExperimentConfig, args)
    cli.hold_outputs(args.output_dir)   # one run per output folder
    log = cli.setup_logging(args.output_dir / "logs" / "run_paper_comparison.log", args.log_level)
    log.info("paper comparison from %s: %s", args.config, ", ".join(args.variants))
    synthetic = SyntheticConfig(workers=max(base.crops.workers, 1))
    if args.train_studies is not None:
        synthetic.train_studies = args.train_studies
    report, runs = run_comparison(base, args.data_dir, args.output_dir, args.variants, args.baseline_steps,
                                  weights, synthetic)
    print(markdown_table(runs))
    print()
    print(markdown_table(report.tables["table2_models"]))
    print(f"report: {report.markdown}")
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
