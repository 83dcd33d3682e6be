"""Atomic file writes: a temp file in the same folder, then an os.replace.

An interrupted run therefore never leaves a half-written CSV, PNG or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from lsdc.errors import DataError

TEMP_MARK = ".partial-"   # in every temporary name: what a kill mid-write leaves is recognisable


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files interrupted writes left under ``folder`` (call it only while no other
    process writes there: :func:`lsdc.lock.hold`); returns how many."""
    n = 0
    for path in Path(folder).rglob(f".*{TEMP_MARK}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            n += 1
    return n


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temp name keeps the final suffix so writers that pick a format from it (cv2, pandas) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_csv(df: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_csv_checked(path: str | os.PathLike, columns: tuple[str, ...] | list[str], hint: str = "",
                     **kwargs: Any) -> Any:
    """Read a CSV that must hold ``columns``; a missing file or column is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found{': ' + hint if hint else ''}")
    df = pd.read_csv(path, **kwargs)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return df
