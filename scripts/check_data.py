#!/usr/bin/env python
"""Check a competition folder (the real download or synthetic data) before training on it.

Reads the CSVs and every DICOM header (no pixels; dicomsdl) and prints one table: studies and series per
description, studies missing a view, series without files, unreadable files, optional tags absent,
instance-number, pixel-spacing and image-size ranges, empty label cells and labelled cells without a
coordinate, each with what the pipeline will do about it (ok, skip, prior, error). Writes the table to
<output-dir>/data_check/data_check.md and the per-file header table to headers.parquet beside it.
--config and --set are accepted for a uniform command line and not used.
"""

from __future__ import annotations

import sys

from lsdc import cli
from lsdc.datacheck import REPORT_MD, check_data


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="processes reading headers")
    args = parser.parse_args(argv)
    out = args.output_dir / "data_check"
    cli.setup_logging(args.output_dir / "logs" / "check_data.log", args.log_level)
    check_data(args.data_dir, out, workers=args.workers)
    print((out / REPORT_MD).read_text())
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
