"""The command-line contract shared by every script.

Each script gets ``--data-dir``, ``--output-dir``, ``--config``, ``--set key=value`` and
``--log-level``; a log file beside its outputs; its output folder to itself (:func:`hold_outputs`); and one
clear message with exit code 2, instead of a traceback, when the input is bad (any
:class:`~lsdc.errors.LsdcError`) or the disk refuses a write (full, read-only, no permission).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsdc import config as config_mod
from lsdc import lock
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


# The folders this process holds while a script runs under :func:`run` (closed when it ends).
_held: contextlib.ExitStack | None = None

# Write failures a user fixes outside the code: one line each, not a traceback.
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}


def hold_outputs(folder: Path) -> None:
    """Keep ``folder`` to this run until the script ends: a second run on it is refused, naming this one
    (:mod:`lsdc.lock`). Only under :func:`run` (a script run from the command line; ``main()`` called
    directly, as tests do, takes no lock) and only on rank 0 of a torchrun job (its ranks share the folder)."""
    if _held is not None and int(os.environ.get("RANK", "0")) == 0:
        _held.enter_context(lock.hold(folder))


def disk_message(exc: OSError) -> str | None:
    """One line for a write the disk refused, naming the file; None for other OS errors."""
    what = DISK_ERRORS.get(exc.errno or -1)
    if what is None:
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"{what}{where} ({exc.strerror}): free space or choose a writable --output-dir, then rerun to resume"


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a script's ``main`` and turn user errors and refused writes into one line on stderr and exit
    code 2."""
    global _held
    _held = contextlib.ExitStack()
    try:
        with _held:
            code = main(argv)
    except LsdcError as exc:
        logging.getLogger("lsdc").debug("fatal", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        message = disk_message(exc)
        if message is None:
            raise
        logging.getLogger("lsdc").debug("fatal", exc_info=True)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:
        # torch.save reports a full disk from its C++ writer as a RuntimeError, without an errno.
        if "inline_container" not in str(exc) and "No space left" not in str(exc):
            raise
        print(f"error: a checkpoint could not be written ({str(exc).splitlines()[0]}): the disk is probably "
              "full; free space, then rerun to resume", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    finally:
        _held = None
    sys.exit(code or 0)
