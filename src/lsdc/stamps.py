"""What an output was made from: a small record beside it, checked on rerun.

Every step of the pipeline that costs time (crops, localiser folds, localised OOF, ensemble fits,
predictions) writes ``.<output>.made_from.json`` next to its output with a digest of its inputs: the
settings that shaped it and the state of the files it read (content digest for small files, size and
modification time for large ones such as checkpoints, paths and sizes for an image folder). A rerun whose
inputs have the same digest keeps the output; anything changed makes the step run again, and only that
step and those after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from lsdc.io import write_json

log = logging.getLogger(__name__)

CONTENT_LIMIT = 16 * 2**20   # files up to this size are hashed; larger ones are known by size and mtime


def file_state(path: str | Path) -> list[Any]:
    """A JSON-able state of a file that changes whenever its content does: [name, digest or size+mtime];
    [name, None] when absent."""
    path = Path(path)
    if not path.is_file():
        return [path.name, None]
    stat = path.stat()
    if stat.st_size <= CONTENT_LIMIT:
        return [path.name, hashlib.sha1(path.read_bytes()).hexdigest()]
    return [path.name, stat.st_size, stat.st_mtime_ns]


def tree_state(folder: str | Path, pattern: str = "**/*") -> list[Any]:
    """[name, number of files, digest of their paths and sizes] of the files under ``folder`` matching
    ``pattern``, without reading them (a DICOM folder holds thousands of files).

    Modification times are left out on purpose: a dataset copied or mounted again (each Kaggle session
    mounts /kaggle/input anew) must not look new, or hours of crops and training would be redone. A
    competition's images do not change content at the same size and name; the tables beside them are
    hashed by content (:func:`file_state`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [folder.name, None]
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    listing = [[str(p.relative_to(folder)), p.stat().st_size] for p in files]
    return [folder.name, len(files), digest(listing)]


def digest(inputs: Any) -> str:
    """sha1 of the canonical JSON of ``inputs``."""
    return hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def stamp_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.made_from.json")


def is_current(output: str | Path, inputs: Any) -> bool:
    """Whether ``output`` exists and was made from exactly ``inputs``."""
    output, stamp = Path(output), stamp_path(output)
    if not output.exists() or not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("digest") == digest(inputs)
    except (OSError, json.JSONDecodeError):
        return False


def is_stale(output: str | Path, inputs: Any) -> bool:
    """Whether ``output`` was finished from other inputs than ``inputs`` (so partial results beside it
    must not be resumed from). False when it was never finished: an interrupted run may resume."""
    stamp = stamp_path(output)
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("digest") != digest(inputs)
    except (OSError, json.JSONDecodeError):
        return True


def write_stamp(output: str | Path, inputs: Any) -> None:
    """Record that ``output`` was made from ``inputs`` (call it after the output is complete)."""
    write_json(stamp_path(output), {"digest": digest(inputs), "inputs": inputs})
