#!/usr/bin/env python
"""Wall time of a K-fold training on a fresh synthetic set: as many folds as fit in ``--deadline`` seconds.

Generates ``--studies`` synthetic training studies, cuts their crops (both timed), then trains the
config's folds one after the other through ``lsdc.train.train_experiment`` exactly as
``scripts/02_train.py`` does (crop array, batch augmentation on the device, early stopping). Before each
fold it checks that the previous fold's time still fits before the deadline; folds that do not are not
started, and the record says how many ran (nothing is extrapolated). When every fold ran, the OOF score
is computed as usual.

    python benchmarks/bench_folds.py --config configs/attention.yaml --studies 200 --deadline 300 --write
    python benchmarks/bench_folds.py --config configs/smoke.yaml --studies 24 --deadline 120   # CPU look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

import common
from lsdc import config as config_mod
from lsdc.crops import prepare
from lsdc.experiment import METRICS_JSON, ExperimentConfig, fold_dir, resolve_device
from lsdc.folds import prepare_folds
from lsdc.synthetic import SyntheticConfig, generate
from lsdc.train import train_experiment

HISTORY = ("| date | device | config | studies | crop size | folds run / K | seconds (training) | s per fold "
           "| epochs per fold | train images/s | OOF score | all K folds within 10 min |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/attention.yaml"))
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds of training at most (folds not started "
                   "after that are reported as not run)")
    p.add_argument("--workers", type=int, default=common.nproc(), help="generation and crop processes")
    p.add_argument("--data-dir", type=Path, default=None, help="reuse a synthetic folder instead of generating")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, as the scripts take them")
    p.add_argument("--write", action="store_true", help="record this run in benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_mod.load(ExperimentConfig, args.config, args.overrides)
    cfg.crops = dataclasses.replace(cfg.crops, workers=args.workers)
    device = resolve_device(cfg.train.device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({common.nproc()} cores)"
    root = Path(tempfile.mkdtemp(prefix="bench_folds_"))
    try:
        data, out = args.data_dir or root / "data", root / "outputs"
        t0 = time.perf_counter()
        if args.data_dir is None:
            generate(data, SyntheticConfig(train_studies=args.studies, test_studies=0, seed=args.seed,
                                           workers=args.workers), show_progress=False)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare_folds(data, out, cfg.folds.n_folds, cfg.folds.seed)
        prepare(data, out, cfg.crops, show_progress=False)
        t_crops = time.perf_counter() - t0
        print(f"data {t_gen:.1f} s, crops {t_crops:.1f} s; training {cfg.experiment} on {dev_name}")
        start, folds_run, last = time.perf_counter(), [], 0.0
        for fold in range(cfg.folds.n_folds):
            spent = time.perf_counter() - start
            if folds_run and spent + last > args.deadline:
                print(f"fold {fold}: not started ({spent:.0f} s spent, the last fold took {last:.0f} s)")
                break
            t = time.perf_counter()
            one = dataclasses.replace(cfg, folds=dataclasses.replace(cfg.folds, train_folds=[fold]))
            train_experiment(one, data, out, summarise=False)
            last = time.perf_counter() - t
            m = json.loads((fold_dir(out / cfg.experiment, fold) / METRICS_JSON).read_text())
            folds_run.append({"fold": fold, "wall": last, **m})
            print(f"fold {fold}: {last:.1f} s, {m['epochs_run']} epochs, {m['n_train']} training crops")
        total = time.perf_counter() - start
        oof = None
        if len(folds_run) == cfg.folds.n_folds:
            oof = train_experiment(cfg, data, out)["oof_score"]["score"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    k = cfg.folds.n_folds
    n = len(folds_run)
    per_fold = total / max(n, 1)
    epochs = sum(f["epochs_run"] for f in folds_run) / max(n, 1)
    imgs = sum(f["epochs_run"] * f["n_train"] for f in folds_run) / max(total, 1e-9)
    within = "yes" if n == k and total <= 600 else "NO" if n == k else f"not measured ({n} of {k} folds)"
    oof_text = f"{oof:.4f}" if oof is not None else "-"
    row = (f"| {common.now()[:16]} UTC | {dev_name} | `{args.config}` | {args.studies} | {cfg.crops.size} | {n} / {k} "
           f"| {total:.0f} | {per_fold:.0f} | {epochs:.1f} | {imgs:.0f} | {oof_text} | {within} |")
    print(row)
    if args.write:
        section = f"folds_{device.type}"
        lines = [f"### K-fold training on {device.type.upper()} (`bench_folds.py`)", "",
                 "Folds trained one after the other as `scripts/02_train.py` trains them, on a fresh synthetic "
                 f"set; folds that would not have finished within {args.deadline:.0f} s were not started and are "
                 "reported as not run (no extrapolation).", "",
                 f"- Command: `{common.command_line()}`", f"- Date: {common.now()}",
                 f"- Data: {args.studies} studies generated in {t_gen:.0f} s, crops cut in {t_crops:.0f} s "
                 f"({args.workers} processes)",
                 f"- Result: {n} of {k} folds in {total:.0f} s ({per_fold:.0f} s per fold, {epochs:.1f} epochs per "
                 f"fold, {imgs:.0f} training images/s); OOF score {oof_text}",
                 "", *common.history_table("All runs:", HISTORY, [*common.history_rows(section, HISTORY), row])]
        common.write_section(section, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
