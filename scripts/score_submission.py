#!/usr/bin/env python
"""Score a submission CSV with the official competition metric; print the result as JSON on stdout.

The solution is a scoring-format file (row_id, normal_mild, moderate, severe, sample_weight) or a
train.csv-shaped one. As on Kaggle, the submission must hold all 25 rows of every solution study and
no others; rows of unlabeled cells are required but not scored. --config and --set are accepted for
a uniform command line and not used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lsdc import cli, metric, schema

DEFAULT_SUBMISSION = Path("submission") / "submission.csv"


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    parser.add_argument(  # SUPPRESS keeps the help from printing "(default: None)"
        "--solution", type=Path, default=argparse.SUPPRESS,
        help=f"solution CSV (default: <data-dir>/{schema.TEST_SOLUTION_CSV})",
    )
    parser.add_argument("--submission", type=Path, default=DEFAULT_SUBMISSION, help="submission CSV to score")
    args = parser.parse_args(argv)
    log = cli.setup_logging(args.output_dir / "logs" / "score_submission.log", args.log_level)

    solution_path = getattr(args, "solution", None) or args.data_dir / schema.TEST_SOLUTION_CSV
    solution = metric.load_solution(solution_path)
    submission = metric.read_submission(args.submission)
    studies = sorted({schema.parse_row_id(rid)[0] for rid in solution[metric.ROW_ID]})
    required = [rid for study in studies for rid in schema.study_row_ids(study)]
    metric.validate_submission(submission, required_row_ids=required, source=str(args.submission))

    result = metric.score(solution, submission)
    log.info("scored %s against %s: %d labeled rows of %d studies",
             args.submission, solution_path, len(solution), len(studies))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    cli.run(main)
