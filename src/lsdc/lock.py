"""One run per output folder: an advisory lock on ``<folder>/.lock`` that names its holder.

Two runs writing the same experiment would resume from each other's ``last.pt`` and overwrite each other's
checkpoints and predictions. The lock is ``fcntl.flock`` on an open file, so the operating system drops it
when its process ends, however it ends (a kill -9 leaves no stale lock). While it is held no other run
writes in the folder, so the temporary files an interrupted write left behind can be removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lsdc.errors import LsdcError
from lsdc.io import remove_stale_temporaries

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class FolderInUse(LsdcError):
    """Another run holds the output folder."""


def holder(path: Path) -> str:
    """Who holds a lock file, as its holder wrote it (pid, host, command, start), for the refusal."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextlib.contextmanager
def hold(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; FolderInUse naming the other run when it is taken."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+")   # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{folder} is in use by another run ({holder(path)}); wait for it to finish, "
                              "or give this one another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}))
        handle.flush()
        removed = remove_stale_temporaries(folder)
        if removed:
            log.info("removed %d temporary file(s) an interrupted run left in %s", removed, folder)
        yield
    finally:
        handle.close()   # closing drops the lock
