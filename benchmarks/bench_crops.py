#!/usr/bin/env python
"""Crop preparation speed (studies/s): lsdc.crops.crop_study against a naive read-everything reference.

The project's way (``crop_study``) reads every slice's header without pixels (through dicomsdl, a C++
reader, for native little-endian greyscale files, which also gives where their pixel data starts;
pydicom reads any other file), sorts the series, and reads only the slices the crops need (each point's
slice and its neighbours; native pixels straight from the offset found with the header). The naive
reference, implemented here, reads EVERY file of each requested series fully with ``pydicom.dcmread``
(pixels included), decodes all of them into an in-memory volume (``lsdc.dicom.pixels_from_dataset``, the
pydicom route of ``read_pixels``), sorts the slices by position, then cuts the very same crops with the
very same ``crop_roi`` and intensity window. Both produce identical crops (the script checks it), so the
only difference is the I/O strategy. Both run in one process, interleaved (alternating which goes
first), over several rounds; the ratio is the median of per-round ratios.

The files are read from the OS page cache (they were just written or read in the warm-up), so this
measures parsing and decoding cost, not disk bandwidth; on a cold disk the naive way also reads
several times more bytes. Crops are kept in memory (no PNG writing) on both sides. The header reads
alone are also timed on the same files: ``lsdc.dicom.read_header`` against
``pydicom.dcmread(stop_before_pixels=True)``.

    python benchmarks/bench_crops.py                      # 16 fresh synthetic studies in a temp folder
    python benchmarks/bench_crops.py --data-dir /tmp/syn6 --studies 20 --write
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

import common
from lsdc.crops import (
    CropConfig,
    CropRequest,
    crop_roi,
    crop_study,
    neighbour_indices,
    series_window,
    training_requests,
    window_slices,
)
from lsdc.dicom import Series, SliceHeader, load_series, pixels_from_dataset, read_header
from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry
from lsdc.synthetic import SyntheticConfig, generate

SECTION = "crops"
TARGET = 3.0  # the project's target: at least 3x faster than the naive reference
HEADER = ("| date | machine | load (1 min) | studies | rounds | project (studies/s) | naive (studies/s) "
          "| speed-up (naive/project time) | target >= 3x |")

Crops = dict[tuple[str, str], np.ndarray]


# ----------------------------------------------------------------------------- the naive reference


class InMemorySeries(Series):
    """A Series whose every slice was decoded up front: ``image`` looks pixels up in ``volume``."""

    volume: dict[Path, np.ndarray]

    def image(self, i: int) -> np.ndarray:
        """Pixels of slice i from the in-memory volume (no file access)."""
        return self.volume[self.slices[range(len(self.slices))[i]].path]


def header_from_dataset(ds: pydicom.Dataset, path: Path) -> SliceHeader:
    """The SliceHeader of a fully read dataset (same fields ``lsdc.dicom.read_header`` takes)."""
    geometry = SliceGeometry(
        ipp=(float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1]),
             float(ds.ImagePositionPatient[2])),
        iop=tuple(float(v) for v in ds.ImageOrientationPatient),  # type: ignore[arg-type]
        spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
    )
    thickness, between = ds.get("SliceThickness"), ds.get("SpacingBetweenSlices")
    return SliceHeader(
        path=path,
        instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else int(path.stem),
        geometry=geometry,
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        spacing_between_slices=float(between) if between not in (None, "") else None,
        series_description=str(ds.get("SeriesDescription") or "") or None,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
    )


def read_whole_series(folder: Path, study_id: int, series_id: int) -> InMemorySeries:
    """Read and decode every file of a series folder, then sort the slices by position."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers: list[SliceHeader] = []
    volume: dict[Path, np.ndarray] = {}
    for p in files:
        ds = pydicom.dcmread(p)  # the whole file, pixel data included
        # The project's own stored-value -> float mapping, so that both sides give identical crops.
        volume[p] = pixels_from_dataset(ds)
        headers.append(header_from_dataset(ds, p))
    series = InMemorySeries(study_id=study_id, series_id=series_id, slices=headers, directory=folder)
    series.volume = volume
    return series


def naive_crop_study(study_dir: Path, requests: list[CropRequest], cfg: CropConfig) -> Crops:
    """The reference: whole series in memory, then the same window and ``crop_roi`` as the project."""
    study_id = int(study_dir.name)
    by_series: dict[int, list[CropRequest]] = {}
    for r in requests:
        by_series.setdefault(int(r.series_id), []).append(r)
    crops: Crops = {}
    for series_id, reqs in by_series.items():
        folder = study_dir / str(series_id)
        if not folder.is_dir():
            continue  # crop_study skips a missing series too (with a warning)
        series = read_whole_series(folder, study_id, series_id)
        located = [(r, series.index_of_instance(r.instance_number)) for r in reqs]
        window = series_window(series, cfg.low_pct, cfg.high_pct)
        for r, i in located:
            crops[(r.condition, r.level)] = crop_roi(series, i, r.x, r.y, cfg.mm(r.condition), cfg, window)
    return crops


# ----------------------------------------------------------------------------- the two ways, timed


def run_project(studies: list[tuple[Path, list[CropRequest]]], cfg: CropConfig) -> tuple[float, list[Crops]]:
    """Seconds to crop every study the project's way, and the crops."""
    t0 = time.perf_counter()
    out = [crop_study(d, reqs, cfg, None)[1] for d, reqs in studies]
    return time.perf_counter() - t0, out


def run_naive(studies: list[tuple[Path, list[CropRequest]]], cfg: CropConfig) -> tuple[float, list[Crops]]:
    """Seconds to crop every study the naive way, and the crops."""
    t0 = time.perf_counter()
    out = [naive_crop_study(d, reqs, cfg) for d, reqs in studies]
    return time.perf_counter() - t0, out


def identical(a: list[Crops], b: list[Crops]) -> bool:
    """Whether both ways produced the same crops, key by key and byte by byte."""
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def slice_counts(studies: list[tuple[Path, list[CropRequest]]], cfg: CropConfig) -> tuple[int, int]:
    """(slices the project decodes, files the naive way decodes) over all studies (not timed)."""
    decoded = total = 0
    for study_dir, reqs in studies:
        for series_id in sorted({int(r.series_id) for r in reqs}):
            try:
                series = load_series(study_dir / str(series_id))
            except DataError:
                continue
            idx = [series.index_of_instance(r.instance_number) for r in reqs if int(r.series_id) == series_id]
            decoded += len({j for i in idx for j in neighbour_indices(i, cfg.n_slices, len(series))}
                           | set(window_slices(len(series))))
            total += len(series) + len(series.skipped)
    return decoded, total


def stage_times(studies: list[tuple[Path, list[CropRequest]]], cfg: CropConfig) -> dict[str, float]:
    """Milliseconds per study of each stage of both ways (one extra, separately timed pass).

    Project: headers of every file, decoding the needed slices, window + crops. Naive: reading and
    decoding every file, window + crops.
    """
    t = dict.fromkeys(("project headers", "project decode", "project crops", "naive read+decode",
                       "naive crops"), 0.0)
    for study_dir, reqs in studies:
        for series_id in sorted({int(r.series_id) for r in reqs}):
            folder = study_dir / str(series_id)
            if not folder.is_dir():
                continue
            mine = [r for r in reqs if int(r.series_id) == series_id]
            for prefix in ("project", "naive"):
                t0 = time.perf_counter()
                series: Series = load_series(folder) if prefix == "project" \
                    else read_whole_series(folder, int(study_dir.name), series_id)
                t1 = time.perf_counter()
                located = [(r, series.index_of_instance(r.instance_number)) for r in mine]
                needed = {j for _, i in located for j in neighbour_indices(i, cfg.n_slices, len(series))}
                series.images(sorted(needed | set(window_slices(len(series)))))
                t2 = time.perf_counter()
                window = series_window(series, cfg.low_pct, cfg.high_pct)
                for r, i in located:
                    crop_roi(series, i, r.x, r.y, cfg.mm(r.condition), cfg, window)
                t3 = time.perf_counter()
                if prefix == "project":
                    t["project headers"] += t1 - t0
                    t["project decode"] += t2 - t1
                    t["project crops"] += t3 - t2
                else:
                    t["naive read+decode"] += t2 - t0
                    t["naive crops"] += t3 - t2
    return {k: v / len(studies) * 1000 for k, v in t.items()}


def series_files(studies: list[tuple[Path, list[CropRequest]]]) -> list[Path]:
    """Every file whose header crop_study reads: the files of each requested series."""
    files: list[Path] = []
    for study_dir, reqs in studies:
        for series_id in sorted({int(r.series_id) for r in reqs}):
            folder = study_dir / str(series_id)
            if folder.is_dir():
                files += sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return files


def header_times(files: list[Path], rounds: int) -> tuple[float, float, int]:
    """Milliseconds per file to read every header with ``read_header`` and with
    ``pydicom.dcmread(stop_before_pixels=True)`` (medians of interleaved rounds), and how many files
    ``read_header`` read through dicomsdl (those whose header carries the native pixel layout)."""
    def project() -> int:
        return sum(read_header(p).layout is not None for p in files)

    def pydicom_only() -> int:
        for p in files:
            pydicom.dcmread(p, stop_before_pixels=True)
        return 0

    times: dict[str, list[float]] = {"project": [], "pydicom": []}
    fast = 0
    for r in range(rounds):
        for name, fn in (("project", project), ("pydicom", pydicom_only))[:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            fast = max(fast, fn())
            times[name].append((time.perf_counter() - t0) / len(files) * 1000)
    return common.median(times["project"]), common.median(times["pydicom"]), fast


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=16, help="studies to crop (and to generate without --data-dir)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="an existing competition folder (e.g. /tmp/syn6) instead of a fresh synthetic one")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each runs both ways once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated synthetic data")
    p.add_argument("--size", type=int, default=CropConfig.size, help="crop side in pixels")
    p.add_argument("--n-slices", type=int, default=CropConfig.n_slices, choices=(1, 3, 5), help="channels per crop")
    p.add_argument("--write", action="store_true", help="record this run in benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    load_before = common.load_average()
    cfg = CropConfig(size=args.size, n_slices=args.n_slices, workers=1)
    tmp: Path | None = None
    try:
        if args.data_dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="bench_crops_"))
            data_dir = tmp / "data"
            t0 = time.perf_counter()
            generate(data_dir, SyntheticConfig(train_studies=args.studies, test_studies=0, seed=args.seed,
                                               workers=2), show_progress=False)
            print(f"generated {args.studies} synthetic studies in {data_dir} ({time.perf_counter() - t0:.1f} s)")
        else:
            data_dir = args.data_dir
        requests = training_requests(data_dir)
        ids = sorted(requests)[: args.studies]
        studies = [(data_dir / "train_images" / str(s), requests[s]) for s in ids]
        n_crops = sum(len(r) for _, r in studies)
        decoded, total = slice_counts(studies, cfg)
        print(f"{len(studies)} studies, {n_crops} crops of {cfg.size} px x {cfg.n_slices} slices; slices decoded: "
              f"project {decoded} ({decoded / len(studies):.1f}/study), "
              f"naive {total} ({total / len(studies):.1f}/study)")

        # Warm-up (page cache, imports) and the equality check.
        _, a = run_project(studies, cfg)
        _, b = run_naive(studies, cfg)
        same = identical(a, b)
        if not same:
            print("error: the two ways produced different crops; the comparison would be meaningless",
                  file=sys.stderr)
            return 1

        stages = stage_times(studies, cfg)
        breakdown = ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
        print(f"stages (ms/study): {breakdown}")
        files = series_files(studies)
        header_ms, pydicom_ms, n_fast = header_times(files, args.rounds)
        headers = (f"read_header {header_ms:.3f} ms/file (dicomsdl path for {n_fast} of {len(files)} files), "
                   f"pydicom.dcmread(stop_before_pixels=True) {pydicom_ms:.3f} ms/file: "
                   f"{pydicom_ms / header_ms:.1f}x")
        print(f"headers: {headers}")

        proj_t: list[float] = []
        naive_t: list[float] = []
        for r in range(args.rounds):
            order = (run_project, run_naive) if r % 2 == 0 else (run_naive, run_project)
            for fn in order:
                seconds, _ = fn(studies, cfg)
                (proj_t if fn is run_project else naive_t).append(seconds)
            print(f"round {r + 1}/{args.rounds}: project {proj_t[-1]:.2f} s, naive {naive_t[-1]:.2f} s, "
                  f"ratio {naive_t[-1] / proj_t[-1]:.2f}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    n = len(studies)
    proj_rate, naive_rate = n / common.median(proj_t), n / common.median(naive_t)
    ratio = common.median([nt / pt for nt, pt in zip(naive_t, proj_t)])
    load_after = common.load_average()
    ok = "yes" if ratio >= TARGET else "NO"
    machine = f"{common.nproc()} x {common.cpu_model()}"
    row = (f"| {common.now()} | {machine} | {load_before[0]:.2f} | {n} | {args.rounds} | {proj_rate:.2f} "
           f"| {naive_rate:.2f} | {ratio:.2f}x | {ok} |")
    print()
    print(f"project (crop_study): {proj_rate:.2f} studies/s ({common.median(proj_t) / n * 1000:.0f} ms/study)")
    print(f"naive (read all):     {naive_rate:.2f} studies/s ({common.median(naive_t) / n * 1000:.0f} ms/study)")
    print(f"speed-up: {ratio:.2f}x (median of {args.rounds} interleaved rounds; target >= {TARGET:g}x: {ok})")
    print(f"crops identical: {same}")
    print()
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    print(row)

    if args.write:
        rows = common.history_rows(SECTION, HEADER) + [row]
        data = f"a fresh synthetic set (seed {args.seed}) in a temp folder" if args.data_dir is None \
            else f"`{args.data_dir}`"
        body = "\n".join([
            "## Crop preparation (`bench_crops.py`)",
            "",
            "`lsdc.crops.crop_study` (headers only, read through dicomsdl, then only the needed slices, "
            "native pixels straight from the offset found with the header) against a naive "
            "reference in the benchmark (every file of each requested series read fully with "
            "`pydicom.dcmread` and decoded with `lsdc.dicom.pixels_from_dataset`, the pydicom route of "
            "`read_pixels`, sorted by position, same `crop_roi` and window). Crops are "
            "byte-identical on both sides; files come from the page cache; no PNG writing. Project target: "
            f"at least {TARGET:g}x.",
            "",
            "Latest run:",
            "",
            f"- Command: `{common.command_line()}`",
            *common.machine_lines("cpu (single process)", load_before, load_after),
            f"- Data: {n} studies from {data}, {n_crops} crops of {cfg.size} px x {cfg.n_slices} slices; "
            f"slices decoded per study: project {decoded / n:.1f}, naive {total / n:.1f}",
            f"- Where the time goes (ms/study, one separate pass): {breakdown}; I/O alone: project "
            f"{stages['project headers'] + stages['project decode']:.0f} (headers + needed slices), naive "
            f"{stages['naive read+decode']:.0f} (every file read and decoded)",
            f"- Header reads alone, same files (median of {args.rounds} interleaved rounds): {headers}",
            f"- Result: project {proj_rate:.2f} studies/s, naive {naive_rate:.2f} studies/s, "
            f"**speed-up {ratio:.2f}x** (median of {args.rounds} interleaved rounds); crops identical: {same}",
            "",
            *common.history_table("All runs:", HEADER, rows),
        ])
        print(f"wrote {common.write_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
