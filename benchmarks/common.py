"""Helpers shared by the benchmark scripts: machine description, medians, RESULTS.md sections.

Not a benchmark itself. The scripts import it as ``common`` (they run as ``python benchmarks/X.py``,
which puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

# Where --write records runs; LSDC_BENCH_RESULTS moves it (the smoke runs in tests/ and `gpu_check.sh smoke`
# write to a temporary copy, never to the real one).
RESULTS = Path(os.environ.get("LSDC_BENCH_RESULTS") or Path(__file__).resolve().parent / "RESULTS.md")
LOADED = 1.5  # 1-minute load average above which a run is flagged as taken on a shared/loaded machine


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15-minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def torch_version() -> str:
    """torch's version, or 'not installed'."""
    try:
        import torch
    except ImportError:
        return "not installed"
    return str(torch.__version__)


def now() -> str:
    """The current UTC time, to the minute, e.g. 2025-01-31 14:05 UTC."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    """How this script was invoked, as a copy-pasteable command from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


RATIOS = "the interleaved ratios are the figures to compare"


def load_note(before: Sequence[float], after: Sequence[float], advice: str = RATIOS) -> str:
    """One sentence on the machine's load during the run; flags it (with ``advice``) above ``LOADED``."""
    fmt = "/".join
    text = (f"load average (1/5/15 min) {fmt(f'{v:.2f}' for v in before)} at the start, "
            f"{fmt(f'{v:.2f}' for v in after)} at the end")
    if max(before[0], after[0]) > LOADED:
        return (f"{text}: the machine was shared with other jobs and loaded during this run, so absolute "
                f"times are pessimistic and noisy; {advice}.")
    return f"{text}."


def machine_lines(device: str, before: Sequence[float], after: Sequence[float], advice: str = RATIOS) -> list[str]:
    """Markdown bullet lines describing where and when a run was taken."""
    return [
        f"- Date: {now()}",
        f"- Machine: nproc {nproc()}, CPU `{cpu_model()}`, Python {platform.python_version()}, "
        f"torch {torch_version()}, device {device}",
        f"- Load: {load_note(before, after, advice)}",
    ]


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def history_rows(name: str, header: str, path: Path = RESULTS) -> list[str]:
    """Rows of the history table already in section ``name`` (same column count as ``header``)."""
    if not path.is_file():
        return []
    begin, end = _markers(name)
    m = re.search(re.escape(begin) + r"(.*?)" + re.escape(end), path.read_text(), flags=re.S)
    if not m:
        return []
    ncols = header.count("|")
    return [line for line in m.group(1).splitlines()
            if re.match(r"\|\s*\d{4}-\d{2}-\d{2}", line) and line.count("|") == ncols]


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Replace section ``name`` (between its BEGIN/END markers) of RESULTS.md, or append it."""
    begin, end = _markers(name)
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.escape(begin) + r".*?" + re.escape(end)
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: block, text, count=1, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def history_table(title: str, header: str, rows: Sequence[str]) -> list[str]:
    """The 'all runs' markdown table that ends every benchmark section."""
    return [title, "", header, "|" + "---|" * (header.count("|") - 1), *rows]
