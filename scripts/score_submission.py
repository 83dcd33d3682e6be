#!/usr/bin/env python
"""Score submission CSVs with the official competition metric; print the result as JSON on stdout.

The solution is a scoring-format file (row_id, normal_mild, moderate, severe, sample_weight) or a
train.csv-shaped one. As on Kaggle, a submission must hold all 25 rows of every solution study and
no others; rows of unlabeled cells are required but not scored. Each score comes with its 95% interval
(score_lo, score_hi) from a bootstrap over the solution's studies. Several --submission: one result per
file, keyed by its path, each with its paired difference to the best one (diff, diff_lo, diff_hi) on
the same resampled studies. --config and --set are accepted for a uniform command line and not used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lsdc import bootstrap, cli, metric, schema

DEFAULT_SUBMISSION = Path("submission") / "submission.csv"


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    parser.add_argument(  # SUPPRESS keeps the help from printing "(default: None)"
        "--solution", type=Path, default=argparse.SUPPRESS,
        help=f"solution CSV (default: <data-dir>/{schema.TEST_SOLUTION_CSV})",
    )
    parser.add_argument("--submission", type=Path, action="append", default=None,
                        help=f"submission CSV to score; repeat to compare several (default: {DEFAULT_SUBMISSION})")
    parser.add_argument("--resamples", type=int, default=bootstrap.N_RESAMPLES, help="bootstrap resamples")
    args = parser.parse_args(argv)
    paths = args.submission or [DEFAULT_SUBMISSION]
    log = cli.setup_logging(args.output_dir / "logs" / "score_submission.log", args.log_level)

    solution_path = getattr(args, "solution", None) or args.data_dir / schema.TEST_SOLUTION_CSV
    solution = metric.load_solution(solution_path)
    studies = sorted({schema.parse_row_id(rid)[0] for rid in solution[metric.ROW_ID]})
    required = [rid for study in studies for rid in schema.study_row_ids(study)]
    submissions = {}
    for path in paths:
        submissions[str(path)] = metric.read_submission(path)
        metric.validate_submission(submissions[str(path)], required_row_ids=required, source=str(path))
    table = bootstrap.score_table(solution, submissions, n_resamples=args.resamples).set_index("model")
    results = {}
    for name, sub in submissions.items():
        row = table.loc[name]
        results[name] = {**metric.score(solution, sub), "score_lo": row.score_lo, "score_hi": row.score_hi,
                         "n_studies": len(studies)}
        if len(submissions) > 1:
            results[name].update({"diff": row["diff"], "diff_lo": row.diff_lo, "diff_hi": row.diff_hi, "vs": row.vs})
        log.info("scored %s against %s: %d labeled rows of %d studies: %.5f [%.5f, %.5f]", name, solution_path,
                 len(solution), len(studies), results[name]["score"], row.score_lo, row.score_hi)
    json.dump(results[str(paths[0])] if len(paths) == 1 else results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    cli.run(main)
