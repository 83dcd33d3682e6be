"""The one progress bar of long loops (studies, crops, synthetic data): tqdm on stderr, or nothing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "study",
             enabled: bool = True) -> Iterable[T] | Iterator[T]:
    """``items`` wrapped in a progress bar when ``enabled`` (tests and library callers pass False)."""
    if not enabled:
        return items
    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, mininterval=1.0)
