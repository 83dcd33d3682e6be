"""What every picture of the project shares: one resolution and an atomic write (matplotlib's object API,
no pyplot state)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from lsdc.io import atomic_path

DPI = 100


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG by its suffix) so that an interrupted run never leaves half a file."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    return path
