#!/usr/bin/env python
"""Pack trained weights, configs, priors, the localiser and ensemble.json (and the code) into one folder,
ready to upload as a Kaggle dataset for offline inference with 05_predict.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lsdc import cli
from lsdc.inference import PredictConfig
from lsdc.pack import pack


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--weights-dir", type=Path, default=None, help="trained outputs (default: --output-dir)")
    parser.add_argument("--out", type=Path, default=Path("kaggle_dataset"), help="folder to create")
    parser.add_argument("--no-code", action="store_true", help="weights only (code uploaded separately)")
    args = parser.parse_args(argv)
    cfg = cli.load_config(PredictConfig, args)
    cli.setup_logging(args.output_dir / "logs" / "pack_kaggle.log", args.log_level)
    root = None if args.no_code else Path(__file__).resolve().parents[1]
    out = pack(args.weights_dir or args.output_dir, args.out, cfg, root)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{out} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
