#!/usr/bin/env python
"""Time to generate the synthetic competition set (``lsdc.synthetic.generate``) with N worker processes.

The project's target: a 200-study set in under two minutes on 2 cores. The whole ``generate`` call is
timed (process pool start, every study rendered and written as DICOM, the CSVs), into a temporary folder
that is deleted afterwards (or into ``--out``, which is kept). It also reports the CPU time of all
processes, which moves much less than the wall time on a shared machine. ``--studies`` runs a smaller
set; the 200-study time is extrapolated from it only when ``--extrapolate`` is given (linearly, which
slightly overstates the pool's start-up cost).

    python benchmarks/bench_synthetic.py                   # 200 training studies, 2 workers
    python benchmarks/bench_synthetic.py --studies 40 --extrapolate
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common
from lsdc.synthetic import SyntheticConfig, generate

SECTION = "synthetic"
TARGET_STUDIES = 200
TARGET_SECONDS = 120.0
HEADER = ("| date | machine | load (1 min) | studies | workers | seconds | studies/s | 200 studies (s) "
          "| target < 120 s |")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the pool's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def folder_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=TARGET_STUDIES, help="training studies to generate")
    p.add_argument("--test-studies", type=int, default=0, help="test studies to generate as well")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extrapolate", action="store_true",
                   help=f"with fewer than {TARGET_STUDIES} studies, also report the extrapolated "
                        f"{TARGET_STUDIES}-study time")
    p.add_argument("--out", type=Path, default=None, help="folder to generate into and keep (default: temp)")
    p.add_argument("--write", action="store_true", help="record this run in benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = common.load_average()
    tmp: Path | None = None
    if args.out is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
        out = tmp / "data"
    else:
        out = args.out
    cfg = SyntheticConfig(train_studies=args.studies, test_studies=args.test_studies, seed=args.seed,
                          workers=args.workers)
    n = args.studies + args.test_studies
    print(f"generating {args.studies} train + {args.test_studies} test studies with {args.workers} workers "
          f"into {out}")
    try:
        c0, t0 = cpu_seconds(), time.perf_counter()
        generate(out, cfg, show_progress=False)
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds() - c0  # the pool's workers are reaped when generate returns
        size = folder_size(out)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = common.load_average()

    rate = n / seconds
    if n >= TARGET_STUDIES:
        projected, how = seconds * TARGET_STUDIES / n if n > TARGET_STUDIES else seconds, "measured"
    elif args.extrapolate:
        projected, how = seconds * TARGET_STUDIES / n, "extrapolated"
    else:
        projected, how = None, "not measured"
    ok = "-" if projected is None else ("yes" if projected < TARGET_SECONDS else "NO")
    print(f"{n} studies in {seconds:.1f} s: {rate:.2f} studies/s, {size / 2**20:.0f} MiB written")
    floor = cpu / args.workers
    print(f"CPU time of all processes: {cpu:.1f} s, i.e. at least {floor:.1f} s of wall time even on "
          f"{args.workers} otherwise idle cores")
    if projected is not None:
        print(f"{TARGET_STUDIES} studies: {projected:.1f} s ({how}); target < {TARGET_SECONDS:.0f} s: {ok}")
    machine = f"{common.nproc()} x {common.cpu_model()}"
    proj_txt = "-" if projected is None else f"{projected:.1f}" + (" (extrapolated)" if how == "extrapolated" else "")
    row = (f"| {common.now()} | {machine} | {load_before[0]:.2f} | {n} | {args.workers} | {seconds:.1f} "
           f"| {rate:.2f} | {proj_txt} | {ok} |")
    print()
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    print(row)

    if args.write:
        rows = common.history_rows(SECTION, HEADER) + [row]
        body = "\n".join([
            "## Synthetic data generation (`bench_synthetic.py`)",
            "",
            "Wall time of one `lsdc.synthetic.generate` call (pool start-up, rendering, DICOM writing, CSVs) "
            f"into a fresh folder. Project target: {TARGET_STUDIES} studies in under {TARGET_SECONDS:.0f} s "
            "on 2 cores. No reference implementation: the figure is compared with the target only, so it "
            "moves with the machine's load.",
            "",
            "Latest run:",
            "",
            f"- Command: `{common.command_line()}`",
            *common.machine_lines(f"cpu ({args.workers} worker processes)", load_before, load_after,
                                  advice="the CPU time below is the steadier figure"),
            f"- Result: {n} studies ({args.studies} train, {args.test_studies} test) in **{seconds:.1f} s**, "
            f"{rate:.2f} studies/s, {size / 2**20:.0f} MiB written; {TARGET_STUDIES}-study time "
            f"{proj_txt} s ({how}); target met: {ok}",
            f"- CPU time (user + system, main process and workers): {cpu:.1f} s, so {floor:.1f} s is the "
            f"wall-time floor on {args.workers} otherwise idle cores for this set (CPU-bound, perfect "
            "parallelism; a bound derived from the measured CPU time, not a measured wall time)",
            "",
            *common.history_table("All runs:", HEADER, rows),
        ])
        print(f"wrote {common.write_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
