#!/usr/bin/env python
"""How cost grows with work: seconds per study and peak memory of crop preparation, localiser inference
and whole-ensemble prediction at 25, 50, 100 and 200 synthetic studies.

One synthetic training set of the largest size is generated once (or ``--data-dir`` reused); each size
takes its first N studies (a folder of links to them, with its tables cut to those studies, laid out both
as training data for the crops and as test data for the localiser and prediction). Every measurement
runs in a fresh process, so its peak memory (``ru_maxrss`` of the process and of its worker processes)
is its own and no model or crop carries over from a smaller size; the DICOM files are read once before
the clock starts (page cache warm: the figures are reading and computing, not the disk):

- crops: ``lsdc.crops.prepare`` at the annotated points (PNGs, index, crop array), CropConfig of the
  ensemble's first experiment, 2 worker processes;
- localize: ``Localizer.locate`` on every study (series read, every view's detector run);
- predict: ``lsdc.inference.predict_submission``, the whole ensemble of ``--weights-dir`` (localiser, crops
  per model, every fold of every model, blend), as ``05_predict.py`` runs it.

Prediction needs trained weights: by default ``outputs/`` after the README's main command (the smoke
models: smaller crops and fewer folds than the full configs, so the figures are a floor for those).
The per-study cost should stay flat (total linear in studies); the largest size's figure, times the
hidden test's size, gives the Kaggle budget.

Beside it, its bound (``--bound-studies`` > 0, on the CPU): the multiply-adds of the localiser and of the whole
prediction per study, counted by ``lsdc.models.profile.count_macs_of`` on the first studies, over the peak of a
float32 matrix product measured on the same CPU, at the same thread count, in the same run. Measured over bound
says how far the pipeline is from the arithmetic it must do (reading, resampling and Python besides).

    python benchmarks/bench_scaling.py --weights-dir outputs --write
    python benchmarks/bench_scaling.py --sizes 10 20 --stages crops     # a quick look
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

import common
from lsdc import schema
from lsdc.crops import prepare
from lsdc.data import images_dir, load_series_descriptions, load_study_series
from lsdc.experiment import load_experiment_config, resolve_device
from lsdc.inference import PredictConfig, ensemble_plan, localizer_folder, predict_submission
from lsdc.localize import Localizer
from lsdc.models.profile import count_macs_of, matmul_peak_flops
from lsdc.synthetic import SyntheticConfig, generate
from untrained import untrained_weights

STAGES = ("crops", "localize", "predict")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FULL = ("attention", "densenet201", "resnet101")
FLAT = 1.25   # largest size's s/study at most this times the smallest's: "flat"
HISTORY = ("| date | machine | load (1 min) | stage | " + " | ".join(f"s/study @{n}" for n in (25, 50, 100, 200))
           + " | peak MiB @200 | flat (<= 1.25x) |")


def subset(data: Path, root: Path, n: int) -> Path:
    """The first ``n`` studies of ``data`` as a competition folder of links: training tables and images,
    and the same studies as test studies (test_images, test_series_descriptions, sample_submission)."""
    out = root / f"n{n}"
    if out.exists():
        return out
    tmp = root / f"n{n}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / schema.TRAIN_IMAGES).mkdir(parents=True)
    (tmp / schema.TEST_IMAGES).mkdir()
    train = pd.read_csv(data / schema.TRAIN_CSV, keep_default_na=False)
    studies = sorted(train.study_id)[:n]
    if len(studies) < n:
        raise SystemExit(f"{data} holds {len(studies)} studies; --sizes asks for {n}")
    keep = set(studies)
    train[train.study_id.isin(keep)].to_csv(tmp / schema.TRAIN_CSV, index=False)
    coords = pd.read_csv(data / schema.COORDS_CSV)
    coords[coords.study_id.isin(keep)].to_csv(tmp / schema.COORDS_CSV, index=False)
    series = pd.read_csv(data / schema.TRAIN_SERIES_CSV)
    series = series[series.study_id.isin(keep)]
    series.to_csv(tmp / schema.TRAIN_SERIES_CSV, index=False)
    series.to_csv(tmp / schema.TEST_SERIES_CSV, index=False)
    rows = [r for s in studies for r in schema.study_row_ids(int(s))]
    sample = pd.DataFrame({"row_id": rows, **{c: 1 / 3 for c in schema.SEVERITY_COLUMNS}})
    sample.to_csv(tmp / schema.SAMPLE_SUBMISSION_CSV, index=False)
    for s in studies:
        for split in (schema.TRAIN_IMAGES, schema.TEST_IMAGES):
            os.symlink(data / schema.TRAIN_IMAGES / str(s), tmp / split / str(s))
    tmp.rename(out)
    return out


def _peak_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def measure(stage: str, data: Path, weights: Path, work: Path, threads: int, device: str,
            max_failed_share: float = PredictConfig.max_failed_share) -> dict[str, float]:
    """One stage on one folder, in this (fresh) process: wall seconds and peak memory."""
    torch.set_num_threads(threads)
    for f in sorted(data.rglob("*.dcm")):   # the page cache warm for every size: reading, not the disk
        f.read_bytes()
    cfg = PredictConfig(device=device, max_failed_share=max_failed_share)
    n = len(pd.read_csv(data / schema.TRAIN_CSV))
    if stage == "crops":
        _, folders = ensemble_plan(weights, cfg)
        crop_cfg = load_experiment_config(next(iter(folders.values()))).crops
        base, t0 = _peak_mib(), time.perf_counter()
        prepare(data, work, crop_cfg, show_progress=False)
    elif stage == "localize":
        localizer = Localizer.load(localizer_folder(weights, cfg.localizer), resolve_device(device))
        series = load_series_descriptions(data, "test")
        base, t0 = _peak_mib(), time.perf_counter()
        for sid, rows in series.groupby("study_id"):
            localizer.locate(load_study_series(images_dir(data, "test") / str(sid), rows))
    else:
        base, t0 = _peak_mib(), time.perf_counter()
        predict_submission(data, weights, work / "submission.csv", cfg, show_progress=False)
    wall = time.perf_counter() - t0
    return {"studies": n, "seconds": wall, "s_per_study": wall / n, "peak_mib": _peak_mib(), "base_mib": base}


def bound(data: Path, weights: Path, work: Path, threads: int,
          max_failed_share: float = PredictConfig.max_failed_share) -> dict[str, float]:
    """Multiply-adds per study of the localiser and of the whole prediction on ``data``'s studies (counted, in
    this fresh process), and the float32 matrix-product peak (FLOP/s) at ``threads``."""
    torch.set_num_threads(threads)
    n = len(pd.read_csv(data / schema.TRAIN_CSV))
    cfg = PredictConfig(device="cpu", max_failed_share=max_failed_share)
    localizer = Localizer.load(localizer_folder(weights, cfg.localizer), resolve_device("cpu"))
    series = load_series_descriptions(data, "test")
    studies = [(images_dir(data, "test") / str(sid), rows) for sid, rows in series.groupby("study_id")]
    loc_macs, _ = count_macs_of(lambda: [localizer.locate(load_study_series(d, rows)) for d, rows in studies])
    all_macs, _ = count_macs_of(lambda: predict_submission(data, weights, work / "submission.csv", cfg,
                                                           show_progress=False))
    return {"localize": loc_macs / n, "predict": all_macs / n, "peak_flops": matmul_peak_flops()}


def bound_lines(b: dict[str, float], results: dict[str, dict[int, dict[str, float]]], n: int, size: int,
                threads: int) -> list[str]:
    """The bound's lines: multiply-adds per study, the peak, and measured over bound for each stage timed."""
    lines = [f"- Bound (multiply-adds counted on the first {n} studies; float32 matrix-product peak "
             f"{b['peak_flops'] / 1e9:.1f} GFLOP/s at {threads} threads, this CPU, this run): localiser "
             f"{b['localize'] / 1e9:.2f} GMAC/study, whole prediction {b['predict'] / 1e9:.2f} GMAC/study "
             f"(the ensemble's share {(b['predict'] - b['localize']) / 1e9:.2f})"]
    for stage in ("localize", "predict"):
        if stage in results and size in results[stage]:
            floor = 2 * b[stage] / b["peak_flops"]
            measured = results[stage][size]["s_per_study"]
            lines.append(f"  - {stage}: bound {floor:.3f} s/study, measured {measured:.3f} at {size} studies: "
                         f"{measured / floor:.1f}x the bound")
    return lines


def untrained_text(args: argparse.Namespace) -> str:
    """What --untrained timed: the full configs, or the ones given."""
    full = [CONFIGS / f"{m}.yaml" for m in FULL]
    if [p.resolve() for p in args.configs] == full and args.folds == 5 \
            and args.localizer_config.resolve() == CONFIGS / "localizer.yaml":
        return "untrained full configs"
    return (f"untrained, {args.folds} folds of " + ", ".join(f"`{p}`" for p in args.configs)
            + f", localiser `{args.localizer_config}`")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200])
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--weights-dir", type=Path, default=Path("outputs"),
                   help="trained outputs with a localiser and an ensemble (after the README's main command)")
    p.add_argument("--untrained", action="store_true",
                   help="time the full configs (attention, densenet201, resnet101 at 224 px, 5 folds each, and "
                        "configs/localizer.yaml) with untrained weights instead of --weights-dir")
    p.add_argument("--configs", type=Path, nargs="+", default=[CONFIGS / f"{m}.yaml" for m in FULL],
                   help="--untrained: the experiment configs (default: the full attention, densenet201, resnet101)")
    p.add_argument("--localizer-config", type=Path, default=CONFIGS / "localizer.yaml",
                   help="--untrained: the localiser's config")
    p.add_argument("--folds", type=int, default=5, help="--untrained: fold models per experiment and view")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the localiser and the models run")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="an existing synthetic competition folder with at least max(--sizes) training studies")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads in each measuring process")
    p.add_argument("--hidden-studies", type=int, default=None,
                   help="the hidden test's study count, for the Kaggle budget line (unknown here: not published)")
    p.add_argument("--limit-hours", type=float, default=9.0,
                   help="the notebook run-time limit to budget against (Kaggle code competitions: usually 9 h; "
                        "check the competition's Code Requirements)")
    p.add_argument("--bound-studies", type=int, default=5,
                   help="studies the multiply-adds are counted on for the bound (0: no bound; CPU runs only)")
    p.add_argument("--write", action="store_true", help="record this run in benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = common.load_average()
    root = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    if args.untrained:
        args.weights_dir = untrained_weights(root / "weights", args.configs, args.localizer_config, args.folds)
    elif not (args.weights_dir / "ensemble.json").is_file():
        raise SystemExit(f"{args.weights_dir} has no ensemble.json: run the README's main command first, "
                         f"point --weights-dir at trained outputs, or time untrained full configs (--untrained)")
    models = sorted(ensemble_plan(args.weights_dir, PredictConfig())[1])
    # Untrained weights place points anywhere: most cells would rightly count as a systematic failure, which
    # would stop the prediction being timed (the work is the same; the rows mean nothing).
    share = 1.0 if args.untrained else PredictConfig.max_failed_share
    results: dict[str, dict[int, dict[str, float]]] = {s: {} for s in args.stages}
    try:
        data = args.data_dir
        if data is None:
            data = root / "data"
            t0 = time.perf_counter()
            generate(data, SyntheticConfig(train_studies=max(args.sizes), test_studies=0, seed=args.seed),
                     show_progress=False)
            print(f"generated {max(args.sizes)} studies in {time.perf_counter() - t0:.0f} s")
        ctx = mp.get_context("spawn")
        for n in sorted(args.sizes):
            folder = subset(data.resolve(), root, n)
            for stage in args.stages:
                work = root / f"work_{stage}_{n}"
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    r = pool.submit(measure, stage, folder, args.weights_dir.resolve(), work, args.threads,
                                    args.device, share).result()
                shutil.rmtree(work, ignore_errors=True)
                results[stage][n] = r
                print(f"{stage:8s} {n:4d} studies: {r['seconds']:7.1f} s, {r['s_per_study']:.3f} s/study, "
                      f"peak {r['peak_mib']:.0f} MiB (before the stage {r['base_mib']:.0f})")
        bound_text: list[str] = []
        if args.bound_studies > 0 and args.device == "cpu":
            n_bound = min(args.bound_studies, max(args.sizes))
            folder = subset(data.resolve(), root, n_bound)
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                b = pool.submit(bound, folder, args.weights_dir.resolve(), root / "work_bound", args.threads,
                                share).result()
            bound_text = bound_lines(b, results, n_bound, max(args.sizes), args.threads)
            print("\n".join(bound_text))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = common.load_average()

    sizes = sorted(args.sizes)
    marginal = {stage: (by_n[sizes[-1]]["seconds"] - by_n[sizes[0]]["seconds"]) / max(sizes[-1] - sizes[0], 1)
                for stage, by_n in results.items()}   # the cost of one more study, start-up costs aside
    rows, flat = [], {}
    for stage, by_n in results.items():
        per = [by_n[n]["s_per_study"] for n in sizes]
        flat[stage] = per[-1] <= FLAT * per[0]
        cells = " | ".join(f"{by_n[n]['s_per_study']:.3f}" if n in by_n else "-" for n in (25, 50, 100, 200))
        rows.append(f"| {common.now()[:16]} UTC | {common.nproc()} x {common.cpu_model()} | {load_before[0]:.2f} "
                    f"| {stage} | {cells} | {by_n[sizes[-1]]['peak_mib']:.0f} | {'yes' if flat[stage] else 'NO'} |")
    for row in rows:
        print(row)
    budget = []
    if "predict" in results:
        per = max(results["predict"][sizes[-1]]["s_per_study"], marginal["predict"])
        fits = args.limit_hours * 3600 / per
        budget.append(f"- Budget: whole-ensemble prediction at {per:.2f} s/study on this CPU fits "
                      f"{fits:,.0f} studies in {args.limit_hours:g} h")
        if args.hidden_studies:
            budget.append(f"- For {args.hidden_studies} hidden test studies: {per * args.hidden_studies / 3600:.2f} h")
        print("\n".join(budget))
    if args.write:
        section = "scaling" if args.device == "cpu" else "scaling_cuda"
        head = " | ".join(f"{n} studies (s/study)" for n in sizes)
        table = [f"| stage | {head} | one more study (s) | peak MiB, largest (before) | flat |",
                 "|---|" + "---|" * (len(sizes) + 3)]
        for stage, by_n in results.items():
            table.append(f"| {stage} | " + " | ".join(f"{by_n[n]['s_per_study']:.3f}" for n in sizes)
                         + f" | {marginal[stage]:.3f} | {by_n[sizes[-1]]['peak_mib']:.0f} "
                         f"({by_n[sizes[-1]]['base_mib']:.0f}) "
                         f"| {'yes' if flat[stage] else 'NO'} |")
        title = ("## How cost grows with work (`bench_scaling.py`)" if args.device == "cpu"
                 else "### Prediction cost per study on CUDA (`bench_scaling.py --device cuda`)")
        lines = [title, "",
                 "Seconds per study and peak memory (the measuring process and its workers) of crop preparation, "
                 "localiser inference and whole-ensemble prediction, each size in a fresh process on the first N "
                 f"studies of one synthetic set. Flat: the largest size's s/study at most {FLAT}x the smallest's. "
                 "One more study: (time at the largest size - time at the smallest) / (difference in studies), "
                 "the cost per study once start-up (worker pools, model loading) is paid.",
                 "", "Latest run:", "", f"- Command: `{common.command_line()}`",
                 *common.machine_lines(args.device, load_before, load_after),
                 f"- Weights: {untrained_text(args) if args.untrained else f'`{args.weights_dir}`'} "
                 f"({', '.join(models)})",
                 *budget, *bound_text, "", *table, "",
                 *common.history_table("All runs:", HISTORY, [*common.history_rows(section, HISTORY), *rows])]
        common.write_section(section, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
