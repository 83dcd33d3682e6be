#!/usr/bin/env python
"""Pack trained weights, configs, priors, the localiser and ensemble.json (and the code) into one folder,
ready to upload as a Kaggle dataset for offline inference with 05_predict.py or notebooks/kaggle_inference.ipynb.

Fold checkpoints are stored in float16 by default (about half the upload; loading casts them back into
float32 models); --no-half keeps them as trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lsdc import cli
from lsdc.inference import MANIFEST_JSON, PredictConfig
from lsdc.pack import folder_size, pack


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], default_config=None)
    parser.add_argument("--weights-dir", type=Path, default=None, help="trained outputs (default: --output-dir)")
    parser.add_argument("--out", type=Path, default=Path("kaggle_dataset"), help="folder to create")
    parser.add_argument("--no-code", action="store_true", help="weights only (code uploaded separately)")
    parser.add_argument("--half", action=argparse.BooleanOptionalAction, default=True,
                        help="fold checkpoints in float16 (--no-half: float32 as trained)")
    parser.add_argument("--half-localizer", action="store_true",
                        help="the localiser in float16 too (4 MB on the smoke preset; kept float32 by default)")
    args = parser.parse_args(argv)
    cfg = cli.load_config(PredictConfig, args)
    cli.setup_logging(args.output_dir / "logs" / "pack_kaggle.log", args.log_level)
    root = None if args.no_code else Path(__file__).resolve().parents[1]
    weights = args.weights_dir or args.output_dir
    out = pack(weights, args.out, cfg, root, half=args.half, half_localizer=args.half_localizer)
    ckpts = [p for paths in json.loads((out / MANIFEST_JSON).read_text())["experiments"].values() for p in paths]
    packed, trained = (sum((folder / p).stat().st_size for p in ckpts) / 2**20 for folder in (out, weights))
    precision = "float16" if args.half else "float32"
    print(f"{out}: {folder_size(out) / 2**20:.1f} MiB; {len(ckpts)} fold checkpoints {packed:.1f} MiB in "
          f"{precision} ({trained:.1f} MiB as trained)")
    return 0


if __name__ == "__main__":
    cli.run(main, sys.argv[1:])
