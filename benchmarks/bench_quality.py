#!/usr/bin/env python
"""The quality bench: the whole pipeline on enough synthetic studies that its model comparisons mean something.

Runs ``lsdc.pipeline.run_pipeline`` with ``configs/bench_quality.yaml`` (700 training and 200 labeled test
studies; about an hour on 2 CPU cores; it resumes, so a rerun on finished outputs takes seconds), then
writes ``benchmarks/QUALITY.md``: every model at annotated and at localised points with 95% intervals and
paired differences (bootstrap over studies), what localisation costs each model, the ensemble judged out of
fold, what was shipped and why, the shipped submission and every model on the held-out test studies, how
optimistic the OOF is when the held-out fold chooses its own checkpoint, the fold averages compared on the
test studies, and how wide the paired intervals are (the bench's power).

    python benchmarks/bench_quality.py --write                      # 2 CPU cores: about an hour
    python benchmarks/bench_quality.py --config configs/bench_quality_224.yaml --write   # GPU, 224 px
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import common
from lsdc import bootstrap, cli, metric, schema
from lsdc import config as config_mod
from lsdc.ensemble import (
    FOLD_AVERAGES,
    SPEC_JSON,
    EnsembleFit,
    EnsembleSpec,
    blend_folds,
    ensemble_oof_name,
    fit_blend,
    fit_ensemble,
    load_ensemble,
    read_oof,
    single_spec,
    summary_markdown,
)
from lsdc.experiment import (
    FOLD_SELECTED_OOF_CSV,
    LOCALIZED_OOF_CSV,
    OOF_CSV,
    fill_with_prior,
    load_experiment_config,
    load_prior,
    resolve_device,
)
from lsdc.folds import folds_csv
from lsdc.inference import FOLD_PREDICTIONS_CSV
from lsdc.labeled_test import fold_frames_of, labeled_test_markdown
from lsdc.localized_oof import SCORES_CSV, cost_markdown, read_cost_table
from lsdc.pipeline import PipelineConfig, run_pipeline
from lsdc.train.config import PAPER_RECIPE

QUALITY = Path(__file__).resolve().parent / "QUALITY.md"
RUNS_JSON = "bench_runs.json"   # every run on an output folder: when, how long, each step (kept steps take ~0 s)
TARGET = 0.02           # the paired difference the bench should resolve (its interval half-width at most this)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/bench_quality.yaml"))
    p.add_argument("--data-dir", type=Path, default=Path("input/bench_quality"),
                   help="the bench's synthetic data (generated there when empty)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/bench_quality"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline config overrides, as run_pipeline.py takes them")
    p.add_argument("--write", action="store_true", help="write benchmarks/QUALITY.md")
    p.add_argument("--out", type=Path, default=QUALITY, help="where --write puts the report")
    return p.parse_args(argv)


def optimism(out: Path, names: list[str], labels: pd.DataFrame) -> pd.DataFrame:
    """Per model: its OOF (checkpoint chosen on validation studies) against the OOF had each held-out fold
    chosen its own checkpoint, paired on the same resampled studies."""
    rows = []
    for n in names:
        path = out / n / FOLD_SELECTED_OOF_CSV
        if not path.is_file():
            continue
        honest, chosen_on_fold = pd.read_csv(out / n / OOF_CSV), pd.read_csv(path)
        studies = {schema.parse_row_id(r)[0] for r in honest.row_id}
        solution = metric.solution_from_labels(labels[labels.study_id.isin(studies)])
        t = bootstrap.score_table(solution, {"honest": honest, "fold": chosen_on_fold}, reference="honest")
        h, f = t.set_index("model").loc["honest"], t.set_index("model").loc["fold"]
        rows.append({"model": n, "honest": h.score, "honest_lo": h.score_lo, "honest_hi": h.score_hi,
                     "fold_selected": f.score, "optimism": 0.0 - f["diff"], "optimism_lo": 0.0 - f.diff_hi,
                     "optimism_hi": 0.0 - f.diff_lo})   # honest minus fold-selected: > 0 flattered the OOF
    return pd.DataFrame(rows)


def train_settings(out: Path, name: str) -> dict:
    """An experiment's saved config as a dict, without what names it or does not change what it learns."""
    d = config_mod.to_dict(load_experiment_config(out / name))
    for key in ("name", "tag", "log"):
        d.pop(key, None)
    for key in ("workers", "device", "warmup_epochs"):
        d["train"].pop(key, None)
    return d


def paper_recipe_models(out: Path, names: list[str]) -> list[str]:
    """The models of ``names`` trained with today's recipe (the paper's: every ``PAPER_RECIPE`` key at its value)."""
    return [n for n in names if all(train_settings(out, n)["train"][k] == v for k, v in PAPER_RECIPE.items())]


def recipe_pairs(out: Path, names: list[str]) -> list[tuple[str, str, str]]:
    """(variant, base, what changed) for every two models of ``names`` whose settings differ only in recipe
    keys (``PAPER_RECIPE``), the base being the one at the paper's value in each key where they differ (so a
    switch is measured against the model without it, whatever the defaults)."""
    def without_recipe(d: dict) -> dict:
        return {**d, "train": {k: v for k, v in d["train"].items() if k not in PAPER_RECIPE}}

    known = {n: train_settings(out, n) for n in names if (out / n / "config.yaml").is_file()}
    pairs = []
    for n, d in known.items():
        for m, e in known.items():
            differ = [k for k in PAPER_RECIPE if d["train"][k] != e["train"][k]]
            if m == n or not differ or without_recipe(d) != without_recipe(e):
                continue
            if all(e["train"][k] == PAPER_RECIPE[k] for k in differ):
                pairs.append((n, m, ", ".join(f"{k}={d['train'][k]}" for k in differ)))
    return pairs


def recipe_table(out: Path, data_dir: Path, submission: Path, names: list[str], labels: pd.DataFrame
                 ) -> pd.DataFrame:
    """Each recipe variant against its base, paired on the same resampled studies: at annotated points
    (oof.csv), at localised points (oof_localized.csv) and on the labeled test studies (each alone, folds
    averaged as the submission averages them)."""
    rows = []
    fold_path = submission.with_name(FOLD_PREDICTIONS_CSV)
    folds = fold_frames_of(pd.read_csv(fold_path)) if fold_path.is_file() else {}
    test_path = data_dir / schema.TEST_SOLUTION_CSV
    row_ids = pd.read_csv(submission).row_id.tolist()
    for variant, base, changed in recipe_pairs(out, names):
        row = {"variant": variant, "base": base, "changed": changed}
        for where, csv in (("annotated", OOF_CSV), ("localized", LOCALIZED_OOF_CSV)):
            if not ((out / variant / csv).is_file() and (out / base / csv).is_file()):
                continue
            frames = {m: pd.read_csv(out / m / csv) for m in (base, variant)}
            studies = {schema.parse_row_id(r)[0] for r in frames[base].row_id}
            solution = metric.solution_from_labels(labels[labels.study_id.isin(studies)])
            t = bootstrap.score_table(solution, frames, reference=base).set_index("model")
            row.update({f"{where}_{k}": t.loc[m][c] for k, m, c in (
                ("base", base, "score"), ("variant", variant, "score"), ("diff", variant, "diff"),
                ("lo", variant, "diff_lo"), ("hi", variant, "diff_hi"))})
        if test_path.is_file() and base in folds and variant in folds:
            frames = {m: fill_with_prior(row_ids, blend_folds(single_spec(m), {m: folds[m]}, "logits"),
                                         load_prior([out / m])) for m in (base, variant)}
            t = bootstrap.score_table(metric.load_solution(test_path), frames, reference=base).set_index("model")
            row.update({"test_base": t.loc[base].score, "test_variant": t.loc[variant].score,
                        "test_diff": t.loc[variant]["diff"], "test_lo": t.loc[variant].diff_lo,
                        "test_hi": t.loc[variant].diff_hi})
        rows.append(row)
    return pd.DataFrame(rows)


def recipe_lines(table: pd.DataFrame) -> list[str]:
    """The recipe section: each switch's paired difference (variant - base; negative is better)."""
    if table.empty:
        return []
    lines = ["## Training recipe switches", "",
             "Each model trained with recipe switches (`train.loss`, `train.select`, `train.schedule`, "
             "`train.side_agnostic`) against the same experiment with today's recipe (the paper's: pooled crop "
             "loss, checkpoint by validation loss, constant learning rate, one classifier per side), same crops, "
             "folds and seeds. Differences are variant - base, paired over studies: negative is better, an "
             "interval that excludes 0 is resolved.", "",
             "| variant | vs base | switches | annotated: base -> variant, diff [95% CI] | localised: base -> variant, "
             "diff [95% CI] | test: base -> variant, diff [95% CI] |", "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        cells = []
        for where in ("annotated", "localized", "test"):
            if f"{where}_diff" in r and pd.notna(r[f"{where}_diff"]):
                cells.append(f"{r[f'{where}_base']:.4f} -> {r[f'{where}_variant']:.4f}, "
                             + bootstrap.format_interval(r[f"{where}_diff"], r[f"{where}_lo"], r[f"{where}_hi"], 4,
                                                         signed=True))
            else:
                cells.append("-")
        lines.append(f"| {r.variant} | {r.base} | {r.changed} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def recipe_ensembles(out: Path, data_dir: Path, submission: Path, names: list[str], labels: pd.DataFrame,
                     rule: str, shipped: EnsembleSpec | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The ensemble chosen (nested, on the localised OOF) from today's recipe's models against the one chosen
    from the other recipes' models and the one chosen from all: each judged on rows its fit did not see, and
    each on the held-out test studies, paired against today's. Returns the table and what each shipped.
    ``shipped``: the pipeline's own ensemble, chosen on the localised OOF from all the models (not fitted again)."""
    today = paper_recipe_models(out, names)
    pools = {"today's recipe": today, "new recipes": [n for n in names if n not in today], "all models": names}
    pools = {k: v for k, v in pools.items() if v and all((out / n / LOCALIZED_OOF_CSV).is_file() for n in v)}
    if "today's recipe" not in pools or len(pools) < 2:
        return pd.DataFrame(), {}
    f = pd.read_csv(out / folds_csv(load_experiment_config(out / names[0]).folds.n_folds))
    folds = dict(zip(f.study_id.astype(int), f.fold.astype(int)))
    fits = {k: fit_ensemble({n: read_oof(out / n / LOCALIZED_OOF_CSV) for n in v}, labels, folds=folds)
            for k, v in pools.items() if not (k == "all models" and shipped is not None)}
    if shipped is not None and "all models" in pools:   # the pipeline already chose it from all of them
        fits["all models"] = EnsembleFit(shipped, read_oof(out / ensemble_oof_name(SPEC_JSON)), shipped.fitted)
    studies = set.intersection(*({schema.parse_row_id(r)[0] for r in fit.oof.row_id} for fit in fits.values()))
    solution = metric.solution_from_labels(labels[labels.study_id.isin(studies)])
    oof = bootstrap.score_table(solution, {k: fit.oof for k, fit in fits.items()}, reference="today's recipe")
    table = oof.rename(columns={c: f"oof_{c}" for c in oof.columns if c != "model"})
    test_path = data_dir / schema.TEST_SOLUTION_CSV
    fold_path = submission.with_name(FOLD_PREDICTIONS_CSV)
    if test_path.is_file() and fold_path.is_file():
        fold_frames = fold_frames_of(pd.read_csv(fold_path))
        row_ids = pd.read_csv(submission).row_id.tolist()
        frames = {k: fill_with_prior(row_ids, blend_folds(fit.spec, {m: fold_frames[m] for m in fit.spec.models},
                                                          rule), load_prior([out / m for m in fit.spec.models]))
                  for k, fit in fits.items()}
        test = bootstrap.score_table(metric.load_solution(test_path), frames, reference="today's recipe")
        table = table.merge(test.rename(columns={c: f"test_{c}" for c in test.columns if c != "model"}), on="model")
    return table, {k: fit.spec.shipped for k, fit in fits.items()}


def recipe_ensemble_lines(table: pd.DataFrame, shipped: dict[str, str]) -> list[str]:
    """The section comparing the ensembles each recipe's models make (the issue's goal: 10% better)."""
    if table.empty:
        return []
    lines = ["## The ensemble each recipe makes", "",
             "The ensemble chosen and fitted out of fold (as the pipeline ships it) from the models trained with "
             "today's recipe, from the models trained with the other recipes, and from all of them; judged on the "
             "localised OOF rows its fits did not see and on the held-out test studies, paired against today's.", "",
             "| models chosen from | shipped | localised OOF [95% CI] | vs today's [95% CI] | relative "
             "| test [95% CI] | vs today's [95% CI] |", "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        test = (f"{interval_cell(r, 'test_score', 'test_score_lo', 'test_score_hi')} | "
                f"{interval_cell(r, 'test_diff', 'test_diff_lo', 'test_diff_hi', signed=True)}"
                if "test_score" in r else "- | -")
        base = table.set_index("model").loc["today's recipe", "oof_score"]
        oof = interval_cell(r, "oof_score", "oof_score_lo", "oof_score_hi")
        diff = interval_cell(r, "oof_diff", "oof_diff_lo", "oof_diff_hi", signed=True)
        lines.append(f"| {r.model} | {shipped[r.model]} | {oof} | {diff} | {r.oof_diff / base:+.1%} | {test} |")
    return [*lines, ""]


def fold_average_table(out: Path, data_dir: Path, submission: Path, names: list[str]) -> pd.DataFrame:
    """Per model, with per-group temperatures fitted on its localised OOF: its test score under each fold
    average (lsdc.ensemble.FOLD_AVERAGES), paired against "tempered"."""
    folds = fold_frames_of(pd.read_csv(submission.with_name(FOLD_PREDICTIONS_CSV)))
    solution = metric.load_solution(data_dir / schema.TEST_SOLUTION_CSV)
    labels = pd.read_csv(data_dir / schema.TRAIN_CSV)
    row_ids = pd.read_csv(submission).row_id.tolist()
    rows = []
    for n in names:
        if n not in folds or not (out / n / LOCALIZED_OOF_CSV).is_file():
            continue
        oof = pd.read_csv(out / n / LOCALIZED_OOF_CSV)
        studies = {schema.parse_row_id(r)[0] for r in oof.row_id}
        fit = fit_blend({n: oof}, metric.solution_from_labels(labels[labels.study_id.isin(studies)]), quiet=True)
        spec = single_spec(n)
        spec.temperatures = fit.temperatures
        prior = load_prior([out / n])
        frames = {rule: fill_with_prior(row_ids, blend_folds(spec, {n: folds[n]}, rule), prior)
                  for rule in FOLD_AVERAGES}
        t = bootstrap.score_table(solution, frames, reference="tempered").set_index("model")
        for rule in FOLD_AVERAGES:
            rows.append({"model": n, "temperatures": "/".join(f"{fit.temperatures[g]:.2f}" for g in schema.GROUPS),
                         "fold_average": rule, **t.loc[rule][["score", "score_lo", "score_hi", "diff", "diff_lo",
                                                              "diff_hi"]].to_dict()})
    return pd.DataFrame(rows)


def power(table: pd.DataFrame) -> tuple[float, float]:
    """Median and largest half-width of the paired differences to the best row of an OOF table."""
    half = ((table.diff_hi - table.diff_lo) / 2)[table.model != table.vs]
    return float(half.median()), float(half.max())


def interval_cell(r: pd.Series, key: str, lo: str, hi: str, signed: bool = False) -> str:
    return bootstrap.format_interval(r[key], r[lo], r[hi], 4, signed=signed)


def device_name() -> str:
    device = resolve_device("auto")
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({common.nproc()} cores)"


def record_run(out: Path, seconds: float, times: dict) -> list[dict]:
    """Append this run to ``out/bench_runs.json`` and return every run recorded there: a rerun on finished
    outputs keeps what is done, so its own time says nothing of what the bench costs."""
    path = out / RUNS_JSON
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append({"date": common.now(), "seconds": round(seconds, 1), "times": times})
    path.write_text(json.dumps(runs, indent=1) + "\n")
    return runs


def report(args: argparse.Namespace, cfg: PipelineConfig, result: dict, runs: list[dict], load: tuple) -> str:
    out = args.output_dir
    spec = result["spec"]
    names = list(spec.oof_scores)
    labels = pd.read_csv(args.data_dir / schema.TRAIN_CSV)
    annotated = pd.read_csv(out / "oof_table.csv")
    localized = pd.read_csv(out / "oof_localized_table.csv")
    test_scores = result["test_scores"]
    opt = optimism(out, names, labels)
    fa = fold_average_table(out, args.data_dir, Path(result["submission"]), names)
    med_a, max_a = power(annotated)
    med_l, max_l = power(localized)
    annotated_spec = load_ensemble(out / "ensemble_annotated.json") if (out / "ensemble_annotated.json").is_file() \
        else None
    lines = [
        "# Quality bench",
        "",
        f"`{common.command_line()}` (config `{args.config}`): the pipeline on "
        f"{cfg.synthetic.train_studies} synthetic training studies ({len(labels)} generated) and "
        f"{cfg.synthetic.test_studies} labeled test studies, seed {cfg.synthetic.seed}; models: "
        + ", ".join(f"`{n}`" for n in names) + ".",
        "",
        *common.machine_lines(device_name(), load, common.load_average(),
                              "scores do not depend on load; wall times do"),
        *[f"- Run {i + 1} on these outputs ({r['date']}): {r['seconds'] / 60:.1f} min; step times (s): "
          f"{json.dumps(r['times'])}" for i, r in enumerate(runs)],
        "",
        "Scores are the official weighted log loss (lower is better). Intervals are 95% percentile intervals of a "
        "bootstrap over studies (2000 resamples); differences are paired (every model scored on the same "
        "resampled studies) and an interval that excludes 0 is a difference this bench resolves. Float results "
        "differ between CPUs: compare within one run.",
        "",
        "## OOF at annotated points",
        "",
        summary_markdown(annotated),
        "## What localisation costs each model",
        "",
        "Each training study placed by the localiser fold that did not see it, classified by the model fold that "
        "did not see it, against the same model at the annotated points.",
        "",
        cost_markdown(read_cost_table(out / SCORES_CSV)),
        "## OOF at held-out localiser points (what test rows see; the ensemble is chosen on it)",
        "",
        summary_markdown(localized),
        "## What was shipped",
        "",
        f"- {spec.shipped}.",
        f"- Its OOF score judged on rows it was not fitted on: {spec.nested_score['score']:.4f}; on the rows it "
        f"was fitted on: {spec.in_sample_score['score']:.4f} (optimistic by "
        f"{spec.nested_score['score'] - spec.in_sample_score['score']:+.4f}).",
    ]
    if annotated_spec is not None:
        lines.append(f"- Chosen the same way on the annotated OOF: {annotated_spec.shipped}.")
    lines += ["- Candidates tried (out of fold): "
              + "; ".join(f"{'+'.join(s['models'])}{' (T fitted)' if s['fitted'] else ''} {s['nested_score']:.4f}"
                          f"{' taken' if s['accepted'] else ''}" for s in spec.selection), ""]
    lines += recipe_lines(recipe_table(out, args.data_dir, Path(result["submission"]), names, labels))
    lines += recipe_ensemble_lines(*recipe_ensembles(out, args.data_dir, Path(result["submission"]), names, labels,
                                                     cfg.predict.fold_average,
                                                     spec if cfg.ensemble_on == "localized" else None))
    lines += ["## The held-out test studies", "",
              f"{cfg.synthetic.test_studies} test studies the pipeline localised and predicted without coordinates, "
              "scored against `test_solution.csv`; differences to the shipped submission, paired.", "",
              labeled_test_markdown(test_scores) if test_scores is not None else "(no labeled test studies)", ""]
    lines += ["## How optimistic the OOF was when the held-out fold chose its checkpoint", "",
              "Same run: each fold's epoch chosen by the validation studies carved out of its training studies "
              "(the OOF this project reports) against the epoch the held-out fold's own loss would have chosen "
              "(what it reported before). Positive optimism: the old OOF looked better than it was.", "",
              "| model | OOF, validation studies choose [95% CI] | OOF, held-out fold chooses | optimism [95% CI] |",
              "|---|---|---|---|"]
    lines += [f"| {r.model} | {interval_cell(r, 'honest', 'honest_lo', 'honest_hi')} | {r.fold_selected:.4f} | "
              f"{interval_cell(r, 'optimism', 'optimism_lo', 'optimism_hi', signed=True)} |"
              for _, r in opt.iterrows()]
    lines += ["", "## Fold averages on the test studies", "",
              "Each model with per-group temperatures fitted on its localised OOF (one fold model per row), its "
              "fold models combined three ways on the test studies (`predict.fold_average`): `tempered` "
              "averages the tempered folds (the average of what was fitted), `probs` tempers the averaged "
              "probabilities, `logits` the normalised geometric mean. Differences paired against `tempered`.", "",
              "| model | T (spinal/foraminal/subarticular) | fold average | test score [95% CI] "
              "| vs tempered [95% CI] |", "|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.temperatures} | {r.fold_average} | {interval_cell(r, 'score', 'score_lo', 'score_hi')}"
              f" | {interval_cell(r, 'diff', 'diff_lo', 'diff_hi', signed=True)} |" for _, r in fa.iterrows()]
    lines += ["", "## Power", "",
              f"Half-width of the paired interval of each model's difference to the best: median {med_a:.4f}, "
              f"largest {max_a:.4f} at annotated points; median {med_l:.4f}, largest {max_l:.4f} at localised "
              f"points (target: a difference of {TARGET} resolved, i.e. half-widths at most {TARGET}).", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.output_dir / "logs" / "bench_quality.log")
    cfg = config_mod.load(PipelineConfig, args.config, args.overrides)
    cfg.submission = str(args.output_dir / "submission.csv")
    load = common.load_average()
    t0 = time.perf_counter()
    result = run_pipeline(cfg, args.data_dir, args.output_dir)
    runs = record_run(args.output_dir, time.perf_counter() - t0, result["times"])
    text = report(args, cfg, result, runs, load)
    sys.stdout.write(text)
    if args.write:
        tmp = args.out.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
