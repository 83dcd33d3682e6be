"""The command-line contract shared by every script.

Each script gets ``--data-dir``, ``--output-dir``, ``--config``, ``--set key=value`` and
``--log-level``; a log file beside its outputs; and one clear message with exit code 2 when the
input is bad (any :class:`~lsdc.errors.LsdcError`), instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsdc import config as config_mod
from lsdc.errors import LsdcError

DEFAULT_DATA_DIR = Path("input/rsna-2024-lumbar-spine-degenerative-classification")
DEFAULT_OUTPUT_DIR = Path("outputs")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_parser(description: str, default_config: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser carrying the common options; scripts add their own after."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common = parser.add_argument_group("common options")
    common.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR,
        help="competition folder (train.csv, train_images/, ...): the real download or synthetic data",
    )
    common.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
        help="where outputs, the resolved config and the log file are written",
    )
    common.add_argument(
        "--config", type=Path, default=default_config,
        help="YAML config (see configs/); its keys are validated against the typed config",
    )
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, dotted for nested sections (repeatable), e.g. --set train.lr=3e-4",
    )
    common.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="console and log-file verbosity",
    )
    return parser


def load_config(cls: type, args: argparse.Namespace) -> Any:
    """The typed config from ``--config`` and ``--set`` (raises ConfigError naming a bad key)."""
    return config_mod.load(cls, args.config, args.overrides)


def setup_logging(log_file: Path | None, level: str = "INFO") -> logging.Logger:
    """Log to stderr and, if given, to ``log_file`` (appending, so a resumed run keeps its history).

    Under torchrun only rank 0 logs as asked; the other ranks print warnings and errors, tagged with
    their rank, and write no log file (one run, one log)."""
    rank = int(os.environ.get("RANK", "0"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level if rank == 0 else "WARNING")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if rank == 0
                                           else f"[rank {rank}] %(levelname)s: %(message)s"))
    root.addHandler(console)
    if log_file is not None and rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(fh)
    return logging.getLogger("lsdc")


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a script's ``main`` and turn user errors into one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except LsdcError as exc:
        logging.getLogger("lsdc").debug("fatal", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
