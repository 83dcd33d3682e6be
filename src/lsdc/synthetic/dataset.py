"""The dataset: every study of a synthetic competition folder, generated in parallel, and the competition's
CSVs written from them; a folder holding data this generator did not write is refused."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.config import to_dict
from lsdc.errors import DataError
from lsdc.io import write_csv, write_text
from lsdc.progress import progress
from lsdc.synthetic.acquisition import unique_ints
from lsdc.synthetic.config import GENERATOR_VERSION, MARKER, SyntheticConfig
from lsdc.synthetic.study import StudyResult, generate_study

log = logging.getLogger(__name__)
DISK_PROBE = 4   # studies written before the disk the rest will need is measured against what is free


def _check_target(out: Path) -> None:
    """Refuse a folder holding anything this generator did not write (e.g. the real download)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise DataError(
            f"refusing to write synthetic data into {out}: it holds files the generator did not write "
            f"(no {MARKER} marker). Is the real competition data there? Choose another --out."
        )


OWNED = (schema.TRAIN_CSV, schema.COORDS_CSV, schema.TRAIN_SERIES_CSV, schema.TEST_SERIES_CSV,
         schema.SAMPLE_SUBMISSION_CSV, schema.TEST_SOLUTION_CSV, schema.TRAIN_IMAGES, schema.TEST_IMAGES)


def study_tasks(cfg: SyntheticConfig) -> list[tuple[int, int, bool]]:
    """(study_id, seed, is_test) of every study of a dataset, training studies first, each part sorted."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.train_studies + cfg.test_studies
    study_ids = np.array(unique_ints(rng, 4_000_000, 4_290_000_000, n))
    order = rng.permutation(n)
    train_ids = sorted(int(s) for s in study_ids[order[: cfg.train_studies]])
    test_ids = sorted(int(s) for s in study_ids[order[cfg.train_studies:]])
    seeds = np.random.SeedSequence(cfg.seed).spawn(n)
    return [(sid, int(seeds[i].generate_state(1)[0]), i >= len(train_ids))
            for i, sid in enumerate(train_ids + test_ids)]


def generate(out: str | Path, cfg: SyntheticConfig, show_progress: bool = True) -> dict[str, Any]:
    """Write a complete synthetic competition folder into ``out``; returns the marker's content.

    Deterministic for ``cfg.seed``. A folder already holding the same complete dataset is left as it
    is; one holding an older synthetic dataset is cleared first; any other non-empty folder is refused.
    """
    out = Path(out)
    _check_target(out)
    params = {"version": GENERATOR_VERSION, **to_dict(cfg)}
    params.pop("workers")
    marker = out / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("params") == params and old.get("complete"):
            log.info("%s already holds this synthetic dataset (seed %d); nothing to do", out, cfg.seed)
            return old
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_text(marker, json.dumps({"params": params, "complete": False}, indent=2))

    tasks = []
    for sid, seed, is_test in study_tasks(cfg):
        images = out / (schema.TEST_IMAGES if is_test else schema.TRAIN_IMAGES)
        tasks.append((sid, seed, is_test, cfg, str(images)))

    results: list[StudyResult] = []
    if cfg.workers > 1 and len(tasks) > 1:
        pool = ProcessPoolExecutor(max_workers=cfg.workers)
        try:
            it = pool.map(generate_study, tasks, chunksize=1)
            results = list(progress(watch_disk(it, out, len(tasks)), "synthetic studies", len(tasks),
                                    enabled=show_progress))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)   # on an error, no study is started after it
    else:
        results = list(progress(watch_disk(map(generate_study, tasks), out, len(tasks)), "synthetic studies",
                                len(tasks), enabled=show_progress))

    train = [r for r, t in zip(results, tasks) if not t[2]]
    test = [r for r, t in zip(results, tasks) if t[2]]
    _write_tables(out, train, test)
    info = {"params": params, "complete": True, "train_studies": len(train), "test_studies": len(test)}
    write_text(marker, json.dumps(info, indent=2))
    return info


def watch_disk(results: Iterator[StudyResult], out: Path, total: int) -> Iterator[StudyResult]:
    """Pass the studies through; once ``DISK_PROBE`` are written, stop with a clear error if the rest would
    not fit on the disk (real-sized studies take about 20 MB each), and turn a full disk into one."""
    done = 0
    try:
        for r in results:
            done += 1
            if done == DISK_PROBE and total > done:
                written = sum(f.stat().st_size for d in (schema.TRAIN_IMAGES, schema.TEST_IMAGES)
                              for f in (out / d).rglob("*") if f.is_file())
                need, free = written / done * (total - done), shutil.disk_usage(out).free
                if need > free:
                    raise DataError(f"{out}: the other {total - done} synthetic studies need about "
                                    f"{need / 2**30:.1f} GiB ({written / done / 2**20:.0f} MiB per study) and "
                                    f"{free / 2**30:.1f} GiB are free: free disk space or generate fewer studies")
            yield r
    except OSError as exc:
        if exc.errno != errno.ENOSPC and "No space left" not in str(exc):
            raise
        raise DataError(f"{out}: the disk is full after {done} of {total} synthetic studies ({exc}); free disk "
                        "space or generate fewer studies, then run again (the folder is regenerated)") from exc


def _write_tables(out: Path, train: list[StudyResult], test: list[StudyResult]) -> None:
    train_df = pd.DataFrame(
        [{"study_id": r.study_id, **{c: r.labels[c] for c in schema.LABEL_COLUMNS}} for r in train],
        columns=list(schema.TRAIN_COLUMNS),
    )
    write_csv(train_df, out / schema.TRAIN_CSV)
    coords = [dict(row, study_id=r.study_id) for r in train for row in r.coords]
    coords_df = pd.DataFrame(coords, columns=list(schema.COORD_COLUMNS))
    write_csv(coords_df, out / schema.COORDS_CSV)
    for rows, name in ((train, schema.TRAIN_SERIES_CSV), (test, schema.TEST_SERIES_CSV)):
        df = pd.DataFrame(sorted((r.study_id, sid, d) for r in rows for sid, d in r.series),
                          columns=list(schema.SERIES_COLUMNS))   # by study, then series_id, as the real files
        write_csv(df, out / name)
    sample = pd.DataFrame(   # the real file: row ids sorted within each study, values written 0.3333333333333333
        [(rid, 1 / 3, 1 / 3, 1 / 3) for r in test for rid in sorted(schema.study_row_ids(r.study_id))],
        columns=list(schema.SUBMISSION_COLUMNS),
    )
    write_csv(sample, out / schema.SAMPLE_SUBMISSION_CSV)
    sol = []
    for r in test:
        for col in schema.LABEL_COLUMNS:
            sev = r.labels[col]
            if not sev:
                continue
            k = schema.SEVERITY_INDEX[sev]
            onehot = [1 if j == k else 0 for j in range(3)]
            sol.append((f"{r.study_id}_{col}", *onehot, int(schema.SEVERITY_WEIGHTS[k])))
    sol_df = pd.DataFrame(sol, columns=[*schema.SUBMISSION_COLUMNS, "sample_weight"])
    write_csv(sol_df, out / schema.TEST_SOLUTION_CSV)
