"""Inference on studies without coordinates: localise, crop, classify with every model and fold, blend.

Everything comes from local folders (``weights_dir``: the outputs folder, or a Kaggle dataset made by
``scripts/pack_kaggle.py``). A study that cannot be fully read still gets all of its rows: from the models
that could run on the conditions that could be placed, and the training prior for the rest. Only data errors
(a missing or unreadable series, a point that cannot be placed or cropped) are absorbed that way, and
``predict_report.csv`` says for every row which models and folds made it or, for a prior row, where it
failed. What is systematic stops prediction with an error: a model giving NaN, more than
``max_failed_share`` of the studies or of one condition group's rows from the prior, an experiment with
untrained folds, an ensemble spec fitted for other models than ``experiments``; so does any other exception
(a code bug, out of memory).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from lsdc import schema
from lsdc.crops import CropRequest, crop_study
from lsdc.data import images_dir, load_series_descriptions, load_study_series, submission_row_ids
from lsdc.dicom import Series
from lsdc.ensemble import SPEC_JSON, EnsembleSpec, blend_folds, equal_spec, load_ensemble
from lsdc.errors import ConfigError, DataError, NonFiniteOutput
from lsdc.experiment import (
    BEST_PT,
    COND_INDEX,
    CONFIG_YAML,
    PRIOR_JSON,
    ExperimentConfig,
    ExperimentModels,
    fill_with_prior,
    load_experiment_config,
    load_experiment_models,
    load_prior,
    resolve_device,
    to_input,
)
from lsdc.io import write_csv
from lsdc.localize import (
    LOCALIZER_PT,
    NO_SERIES,
    NOT_PLACED,
    SERIES_UNREADABLE,
    Localizer,
    Unplaced,
    find_localizer,
    group_cells,
)
from lsdc.metric import validate_submission
from lsdc.progress import progress
from lsdc.sides import mirror_sides
from lsdc.stamps import file_state, is_current, tree_state, write_stamp
from lsdc.tta import VIEWS, predict_views, stamp_value, view_names

log = logging.getLogger(__name__)

MANIFEST_JSON = "manifest.json"   # written by lsdc.pack: what a Kaggle pack holds
REPORT_CSV = "predict_report.csv"
FOLD_PREDICTIONS_CSV = "fold_predictions.csv"   # every fold model's test predictions (predict.fold_predictions)
Crops = dict[tuple[str, str], np.ndarray]
Cell = tuple[str, str]   # (condition, level)

# predict_report.csv: one line per submitted row (format 1, before provenance, had one line per study). The
# format is part of what a submission is made from, so a kept submission always has a report of this format.
REPORT_FORMAT = 2
REPORT_COLUMNS = ("row_id", "study_id", "group", "source", "reason", "detail")
PRIOR = "prior"   # the source of a row no model predicted: the training prior of its condition group
# Why a row got the prior (the report's reason), besides the localiser's NO_SERIES (the study lists no
# series the cell needs), SERIES_UNREADABLE (listed, but missing on disk or unreadable) and NOT_PLACED (read,
# but no point could be placed: the localiser's reason in the detail):
CROP_FAILED = "crop_failed"       # a point was placed but its crop could not be cut (the detail says why)
STUDY_FAILED = "study_failed"     # a data error in the study outside those steps (the detail is the error)
NOT_BLENDED = "not_blended"       # classified, yet no ensemble model's prediction reached the blend
REASONS = (NO_SERIES, SERIES_UNREADABLE, NOT_PLACED, CROP_FAILED, STUDY_FAILED, NOT_BLENDED)


@dataclass
class PredictConfig:
    """Which trained pieces to use and how."""

    localizer: str = ""                   # folder of the localiser under the weights dir ("": the only one there)
    ensemble: str = SPEC_JSON             # blend spec from 04_ensemble.py; missing: the experiments equally
    experiments: list[str] = field(default_factory=list)   # only these (default: the ensemble's models, or
    #                                                        the only trained experiment there)
    # Test-time views averaged with the crops as they are (lsdc.tta.VIEWS: vflip, lrflip), e.g. [vflip, lrflip];
    # an old config's true/false reads as [vflip]/[].
    tta: list[str] | bool = field(default_factory=list)
    # How each experiment's fold models are combined before the blend (lsdc.ensemble.FOLD_AVERAGES):
    # "logits", the normalised geometric mean of the folds, then the spec's temperatures, scored best on the
    # quality bench's test studies for every model (benchmarks/QUALITY.md); "tempered" averages the folds
    # after the temperatures (the average of what the spec was fitted on); "probs" tempers their mean.
    fold_average: Literal["tempered", "probs", "logits"] = "logits"
    # Also write every fold model's test predictions (fold_predictions.csv beside the submission), of every
    # model the ensemble considered (not only those it blends), e.g. to compare the single models and the
    # fold averages on labeled test studies.
    fold_predictions: bool = False
    device: str = "auto"
    batch_size: int = 64
    # A study that cannot be read still gets all its rows (prior where no model ran); when more than this
    # share of the studies get no model prediction at all, or more than this share of one condition group's
    # rows (spinal, foraminal, subarticular) come from the prior, something is systematically wrong (e.g. no
    # Axial T2 ever placed) and prediction stops with an error naming it.
    max_failed_share: float = 0.5

    def __post_init__(self) -> None:
        self.tta = view_names(self.tta)


def trained_experiments(weights_dir: Path) -> list[str]:
    """Folders under ``weights_dir`` holding a trained competition-task experiment (fold checkpoints)."""
    found = []
    for d in sorted(p for p in weights_dir.iterdir() if p.is_dir()) if weights_dir.is_dir() else []:
        if any(d.glob(f"fold*/{BEST_PT}")):
            try:
                if load_experiment_config(d).train.task == "competition":
                    found.append(d.name)
            except DataError:
                continue
    return found


def untrained_folds(cfg: ExperimentConfig, folder: Path, every_fold: bool = False) -> list[int]:
    """The folds of an experiment that should have a checkpoint and have none: all of its folds, or fold 0
    alone for the paper's holdout split (unless ``every_fold``: the localised OOF needs every study's fold)."""
    expected = [0] if cfg.train.split == "holdout" and not every_fold else range(cfg.folds.n_folds)
    return [f for f in expected if not (folder / f"fold{f}" / BEST_PT).is_file()]


def untrained_message(name: str, folder: Path, missing: list[int], n_folds: int, what: str) -> str:
    """The error for an experiment with untrained folds, saying how to train them."""
    return (f"experiment {name}: fold(s) {missing} of {n_folds} not trained (no {folder.name}/fold{missing[0]}/"
            f"{BEST_PT}), so {what} would quietly use fewer folds or the prior: train them with "
            f"scripts/02_train.py --config {folder / CONFIG_YAML} --set folds.train_folds=null (or rerun the "
            "pipeline), or leave the experiment out")


def check_trained(name: str, folder: Path, what: str, every_fold: bool = False) -> None:
    """DataError with the fix when an experiment (with a config.yaml) lacks a fold checkpoint."""
    if (folder / CONFIG_YAML).is_file():
        cfg = load_experiment_config(folder)
        missing = untrained_folds(cfg, folder, every_fold)
        if missing:
            raise DataError(untrained_message(name, folder, missing, cfg.folds.n_folds, what))


def ensemble_plan(weights_dir: Path, cfg: PredictConfig) -> tuple[EnsembleSpec, dict[str, Path]]:
    """Which experiments to blend and how: the spec and each model's folder (with ``cfg.fold_predictions``,
    also those the spec considered and left out). Without a spec or ``cfg.experiments``, the only trained
    experiment in ``weights_dir`` is used; with several, DataError lists them. Without a spec the models are
    blended with equal weights.

    Errors that say the fix, rather than a quietly different blend: ``cfg.experiments`` other than the spec's
    models (its weights and temperatures were fitted for those), a spec named in ``cfg.ensemble`` that does
    not exist, and a blended experiment with untrained folds."""
    spec_path = weights_dir / cfg.ensemble
    spec = load_ensemble(spec_path) if spec_path.is_file() else None
    if spec is None and cfg.ensemble != SPEC_JSON:
        raise ConfigError(f"config key 'ensemble': {spec_path} not found: fit it with scripts/04_ensemble.py "
                          f"--set spec_file={cfg.ensemble}, or leave 'ensemble' at {SPEC_JSON}")
    if spec is not None and cfg.experiments and set(cfg.experiments) != set(spec.models):
        listed = ",".join(cfg.experiments)
        raise ConfigError(
            f"config key 'experiments': {cfg.experiments} are not the models {spec.models} that {spec_path} "
            "was fitted for (its weights and temperatures belong to those): leave 'experiments' unset to predict "
            f"with the spec's models, or fit a spec for these with scripts/04_ensemble.py --set "
            f"experiments=[{listed}] --set spec_file=ensemble_custom.json and predict with --set "
            "ensemble=ensemble_custom.json")
    names = cfg.experiments or (spec.models if spec else [])
    if not names:
        found = trained_experiments(weights_dir)
        if len(found) != 1:
            choice = f"found {', '.join(found)}" if found else "no trained experiment there"
            raise DataError(f"{spec_path} not found and no experiments given ({choice}): run "
                            "scripts/04_ensemble.py, or choose with --set experiments=[name,...]")
        log.info("no %s in %s: using its only experiment, %s", cfg.ensemble, weights_dir, found[0])
        names = found
    elif spec is None:
        log.warning("no %s in %s: the experiments %s are blended with equal weights and T=1", cfg.ensemble,
                    weights_dir, names)
    folders = {n: weights_dir / (spec.experiments.get(n, n) if spec else n) for n in names}
    for n, folder in folders.items():
        check_trained(n, folder, "the submission")
    if cfg.fold_predictions and spec is not None:   # every model the ensemble considered, for the record
        folders.update({n: weights_dir / d for n, d in spec.experiments.items()
                        if n not in folders and (weights_dir / d).is_dir()})
    return spec or equal_spec(names), folders


def load_ensemble_models(weights_dir: Path, cfg: PredictConfig, device: torch.device
                         ) -> tuple[EnsembleSpec, dict[str, ExperimentModels]]:
    """The ensemble spec and every experiment's fold models, keyed by model name in the spec's order; a
    blended experiment with untrained folds is a DataError (also in a pack without its config.yaml)."""
    spec, folders = ensemble_plan(weights_dir, cfg)
    models = {n: load_experiment_models(f, device) for n, f in folders.items()}
    for n in spec.models:
        missing = untrained_folds(models[n].cfg, folders[n])
        if missing:
            raise DataError(untrained_message(n, folders[n], missing, models[n].cfg.folds.n_folds, "the submission"))
    return spec, models


def experiment_folders(weights_dir: Path, models: dict[str, ExperimentModels]) -> list[Path]:
    return [weights_dir / m.name for m in models.values()]


@torch.no_grad()
def classify(models: ExperimentModels, crops: Crops, device: torch.device, tta: Sequence[str], batch_size: int
             ) -> dict[int, dict[tuple[str, str], np.ndarray]]:
    """Per fold model, the softmax of each crop's own condition, averaged over the crop and the test-time
    views named in ``tta`` that apply to it (:func:`lsdc.tta.predict_views`; prediction and the localised OOF
    both come here): fold -> (condition, level) -> (3,). The folds are combined later, with the ensemble's
    temperatures (:func:`lsdc.ensemble.blend_folds`).

    Each fold model sees the crops standardised with the statistics it was trained with. A non-finite
    probability is NonFiniteOutput naming the experiment and fold: a diverged model must not pass as absent.
    """
    keys = list(crops)
    if not keys:
        return {}
    stacked, cond_np = np.stack([crops[k] for k in keys]), np.array([COND_INDEX[c] for c, _ in keys])
    if models.cfg.train.side_agnostic:   # as it was trained: right foramina and recesses mirrored onto the left
        stacked, cond_np = mirror_sides(stacked, cond_np)
    views = [VIEWS[n] for n in view_names(tta)]
    out = {}
    for fm in models.folds:
        total = predict_views(fm.model, to_input(stacked, fm.mean, fm.std), cond_np, views,
                              models.cfg.train.side_agnostic, device, batch_size)
        bad = ~torch.isfinite(total).all(1)
        if bool(bad.any()):
            raise NonFiniteOutput(
                f"experiment {models.name}, fold {fm.fold}: non-finite probabilities for {int(bad.sum())} of "
                f"{len(keys)} crops (e.g. {keys[int(bad.nonzero()[0, 0])]}): its checkpoint is broken, and neither "
                f"the other models nor the prior may stand in for it silently; remove {models.name}/fold{fm.fold} "
                "and train it again with scripts/02_train.py")
        out[fm.fold] = {k: total[i].numpy() for i, k in enumerate(keys)}
    return out


def crops_per_model(study_dir: Path, requests: list[CropRequest], models: dict[str, ExperimentModels],
                    series_cache: dict[int, Series] | None,
                    failures: dict[str, dict[Cell, str]] | None = None) -> dict[str, Crops]:
    """Each model's crops of a study, cut once per distinct crop setting (series read once when cached);
    with ``failures``, each model's requests that could not be cut: model -> cell -> why."""
    by_setting: dict[str, tuple[Crops, dict[Cell, str]]] = {}
    out = {}
    for name, m in models.items():
        key = m.crops.dirname
        if key not in by_setting:
            failed: list[dict[str, str]] = []
            _, crops = crop_study(study_dir, requests, m.crops, None, series_cache=series_cache, failures=failed)
            by_setting[key] = crops, {(f["condition"], f["level"]): f["error"] for f in failed}
        out[name] = by_setting[key][0]
        if failures is not None:
            failures[name] = by_setting[key][1]
    return out


def prediction_rows(study_id: int, probs: dict[tuple[str, str], np.ndarray]) -> list[dict[str, Any]]:
    """Submission rows of one study's classified cells."""
    return [{"row_id": schema.row_id(study_id, cond, level), **dict(zip(schema.SEVERITY_COLUMNS, p.tolist()))}
            for (cond, level), p in probs.items()]


FoldRows = dict[str, dict[int, list[dict[str, Any]]]]   # model -> fold -> submission rows


def add_fold_rows(rows: FoldRows, name: str, study_id: int, probs: dict[int, dict[tuple[str, str], np.ndarray]]
                  ) -> None:
    """Append one study's per-fold predictions (:func:`classify`) of model ``name`` to ``rows``."""
    for fold, cells in probs.items():
        rows.setdefault(name, {}).setdefault(fold, []).extend(prediction_rows(study_id, cells))


def fold_frames(rows: FoldRows) -> dict[str, list[pd.DataFrame]]:
    """Model -> one submission-format frame per fold model (folds in order)."""
    return {n: [pd.DataFrame(r, columns=list(schema.SUBMISSION_COLUMNS)) for _, r in sorted(folds.items())]
            for n, folds in rows.items() if folds}


def fold_table(rows: FoldRows) -> pd.DataFrame:
    """Every fold model's predictions in one long frame: model, fold, row_id, probabilities."""
    parts = [pd.DataFrame(r, columns=list(schema.SUBMISSION_COLUMNS)).assign(model=n, fold=f)
             for n, folds in rows.items() for f, r in sorted(folds.items())]
    cols = ["model", "fold", *schema.SUBMISSION_COLUMNS]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def localizer_folder(weights_dir: Path, name: str) -> Path:
    """The localiser's folder under the weights dir: ``name`` when given; else, in a Kaggle pack, the one
    its manifest names; else the only trained localiser there (see :func:`lsdc.localize.find_localizer`)."""
    manifest = weights_dir / MANIFEST_JSON
    if not name and manifest.is_file():
        packed = json.loads(manifest.read_text()).get("localizer")
        if packed and (weights_dir / packed / LOCALIZER_PT).is_file():
            return weights_dir / packed
    return find_localizer(weights_dir, name)


@dataclass
class StudyOutcome:
    """What became of one study's cells: the models that classified each, and why the others could not be
    (where it actually failed: the series table, the reader, the localiser, the crop), for the report."""

    study_id: int
    classified: dict[Cell, list[str]] = field(default_factory=dict)        # cell -> models
    unplaced: dict[Cell, tuple[str, str]] = field(default_factory=dict)     # cell -> (reason, detail)
    crop_failed: dict[Cell, dict[str, str]] = field(default_factory=dict)   # cell -> model -> why
    error: str = ""                                                          # a data error that ended the study

    def reason(self, cell: Cell, blended: list[str]) -> tuple[str, str]:
        """(reason, detail) of a cell none of the ``blended`` models predicted."""
        if self.error:
            return STUDY_FAILED, self.error
        if cell in self.unplaced:
            return self.unplaced[cell]
        failed = self.crop_failed.get(cell, {})
        for m in blended:
            if m in failed:
                return CROP_FAILED, failed[m]
        others = ", ".join(self.classified.get(cell, [])) or "none"
        return NOT_BLENDED, f"classified by {others}, none of them in the ensemble"

    def summary(self) -> str:
        """The reasons of the cells no model classified, counted (for the log)."""
        reasons = [self.unplaced[c][0] if c in self.unplaced else CROP_FAILED
                   for c in group_cells(schema.GROUPS) if c not in self.classified]
        return ", ".join(f"{r} x{reasons.count(r)}" for r in dict.fromkeys(reasons))


def explain(unplaced: Unplaced, load_failures: dict[str, list[str]]) -> tuple[str, str]:
    """The report's (reason, detail) of a cell the localiser left out. For "no usable series", the series
    table says which it was: none of the needed descriptions listed, or listed but missing on disk or
    unreadable (the reader's message)."""
    if unplaced.reason != NO_SERIES:
        return unplaced.reason, unplaced.detail
    unreadable = [msg for d in unplaced.needs for msg in load_failures.get(d, [])]
    if unreadable:
        return SERIES_UNREADABLE, "; ".join(unreadable)
    return NO_SERIES, f"the study lists no {' or '.join(unplaced.needs)} series"


def predict_study(study_dir: Path, series: pd.DataFrame, localizer: Localizer, models: dict[str, ExperimentModels],
                  device: torch.device, cfg: PredictConfig) -> tuple[StudyOutcome, FoldRows]:
    """Localise, crop and classify one study: its outcome and its per-fold rows (committed by the caller
    only when the whole study went through)."""
    sid = int(study_dir.name)
    outcome = StudyOutcome(sid)
    load_failures: dict[str, list[str]] = {}
    found = load_study_series(study_dir, series, load_failures)
    requests, info = localizer.locate(found)
    outcome.unplaced = {cell: explain(u, load_failures) for cell, u in info["unplaced"].items()}
    cache = {int(s.series_id): s for lst in found.values() for s in lst}
    failures: dict[str, dict[Cell, str]] = {}
    crops = crops_per_model(study_dir, requests, models, cache, failures)
    rows: FoldRows = {}
    for name, m in models.items():
        add_fold_rows(rows, name, sid, classify(m, crops[name], device, cfg.tta, cfg.batch_size))
        for cell in crops[name]:
            outcome.classified.setdefault(cell, []).append(name)
        for cell, why in failures[name].items():
            outcome.crop_failed.setdefault(cell, {})[name] = why
    return outcome, rows


def predict_submission(data_dir: str | Path, weights_dir: str | Path, out_path: str | Path, cfg: PredictConfig,
                       show_progress: bool = True) -> pd.DataFrame:
    """Write the submission for every test study (and ``predict_report.csv`` beside it: where each row came
    from); returns it.

    Per study only data errors (:class:`lsdc.errors.DataError`: a missing or unreadable series, a bad file)
    are recorded and the study's rows left to the prior; any other exception stops the run, and so do the
    systematic failures of :func:`check_failures`. A submission made from the same weights, test data and
    settings (with its report) is kept, not predicted again.
    """
    data_dir, weights_dir, out_path = Path(data_dir), Path(weights_dir), Path(out_path)
    t0 = time.perf_counter()
    loc_dir = localizer_folder(weights_dir, cfg.localizer)
    inputs = prediction_inputs(data_dir, weights_dir, loc_dir, cfg)
    report_path = out_path.with_name(REPORT_CSV)
    if is_current(out_path, inputs) and report_path.is_file():
        log.info("%s is up to date (same weights, test data and settings)", out_path)
        return pd.read_csv(out_path)
    device = resolve_device(cfg.device)
    spec, models = load_ensemble_models(weights_dir, cfg, device)
    localizer = Localizer.load(loc_dir, device)
    prior = load_prior(experiment_folders(weights_dir, models))
    row_ids = submission_row_ids(data_dir)
    series = load_series_descriptions(data_dir, "test")
    studies = list(dict.fromkeys(schema.parse_row_id(r)[0] for r in row_ids))
    per_fold: FoldRows = {}
    outcomes: dict[int, StudyOutcome] = {}
    for sid in progress(studies, "predict", enabled=show_progress):
        study_dir = images_dir(data_dir, "test") / str(sid)
        try:
            outcome, rows = predict_study(study_dir, series[series.study_id == sid], localizer, models, device, cfg)
        except DataError as exc:   # this study's data only; a code bug or out of memory stops the run
            log.warning("study %s: could not be processed (%s); all its rows get the training prior", sid, exc)
            outcome, rows = StudyOutcome(sid, error=str(exc)), {}
        for name, folds in rows.items():
            for fold, r in folds.items():
                per_fold.setdefault(name, {}).setdefault(fold, []).extend(r)
        if not outcome.error and len(outcome.classified) < len(schema.LABEL_COLUMNS):
            log.warning("study %s: %d of 25 cells classified; the rest get the training prior (%s)", sid,
                        len(outcome.classified), outcome.summary())
        outcomes[sid] = outcome
    frames = fold_frames(per_fold)
    blendable = {m: frames[m] for m in spec.models if m in frames}
    blended = blend_folds(spec, blendable, cfg.fold_average) if blendable else None
    report = provenance_report(row_ids, blended, spec, models, outcomes)
    check_failures(report, cfg.max_failed_share)
    sub = fill_with_prior(row_ids, blended, prior)
    validate_submission(sub, required_row_ids=row_ids)
    write_csv(sub, out_path)
    write_csv(report, report_path)
    if cfg.fold_predictions:
        write_csv(fold_table(per_fold), out_path.with_name(FOLD_PREDICTIONS_CSV))
    write_stamp(out_path, inputs)
    log.info("wrote %s: %d rows, %d studies in %.1f s; rows by source and reason (%s):\n%s", out_path, len(sub),
             len(studies), time.perf_counter() - t0, report_path.name, provenance_markdown(provenance_counts(report)))
    return sub


def provenance_report(row_ids: list[str], blended: pd.DataFrame | None, spec: EnsembleSpec,
                      models: dict[str, ExperimentModels], outcomes: dict[int, StudyOutcome]) -> pd.DataFrame:
    """One line per submitted row (:data:`REPORT_COLUMNS`): its source, the ensemble models that carry it in
    the blend with their folds (``attention_smoke[0,1]+resnet101_smoke[0,1]``; a model of weight 0 in the
    row's group counts only where no weighted model is present, as the blend does), or ``prior`` with the
    reason and detail of where the row's cell actually failed."""
    covered: set[str] = set()
    if blended is not None:
        covered = set(blended.row_id[np.isfinite(blended[list(schema.SEVERITY_COLUMNS)].to_numpy()).all(1)])
    folds = {m: ",".join(str(f.fold) for f in models[m].folds) for m in spec.models}
    rows = []
    for rid in row_ids:
        sid, condition, level = schema.parse_row_id(rid)
        group = schema.CONDITION_INFO[condition].group
        outcome = outcomes[sid]
        reason = detail = ""
        if rid in covered:
            present = [m for m in spec.models if m in outcome.classified.get((condition, level), [])]
            weighted = [m for m in present if spec.weights[group][m] > 0] or present
            source = "+".join(f"{m}[{folds[m]}]" for m in weighted)
        else:
            source = PRIOR
            reason, detail = outcome.reason((condition, level), spec.models)
        rows.append({"row_id": rid, "study_id": sid, "group": group, "source": source, "reason": reason,
                     "detail": detail})
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


def _reasons(rows: pd.DataFrame, k: int = 2) -> str:
    """The ``k`` most common reasons of some report rows, with their counts and one detail each."""
    counts = rows.reason.value_counts()
    return "; ".join(f"{r} x{n} (e.g. {rows.detail[rows.reason == r].iloc[0]})" for r, n in counts.head(k).items())


def check_failures(report: pd.DataFrame, max_share: float) -> None:
    """DataError when a failure is systematic rather than a few bad studies: more than ``max_share`` of the
    studies got no model prediction at all, or more than ``max_share`` of one condition group's rows come
    from the prior (e.g. no Axial T2 placed in any study: every study keeps its other rows, but all its
    subarticular rows are the prior). The message names the studies or the group, the counts and the
    commonest reasons."""
    prior = report[report.source == PRIOR]
    failed = [s for s, rows in report.groupby("study_id", sort=False) if (rows.source == PRIOR).all()]
    n_studies = report.study_id.nunique()
    if n_studies and len(failed) > max_share * n_studies:
        shown = ", ".join(str(s) for s in failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise DataError(f"{len(failed)} of {n_studies} test studies got no prediction (more than "
                        f"max_failed_share={max_share}): {shown}; {_reasons(prior[prior.study_id.isin(failed)])}")
    groups = []
    for group in schema.GROUPS:
        rows = report[report.group == group]
        bad = prior[prior.group == group]
        if len(rows) and len(bad) > max_share * len(rows):
            groups.append(f"condition group {group}: {len(bad)} of {len(rows)} rows ({bad.study_id.nunique()} of "
                          f"{rows.study_id.nunique()} studies) got the training prior instead of a model "
                          f"prediction (more than max_failed_share={max_share}): {_reasons(bad)}")
    if groups:
        raise DataError("; ".join(groups))


def read_report(path: str | Path) -> pd.DataFrame:
    """A ``predict_report.csv`` as one line per row (:data:`REPORT_COLUMNS`). An older report (one line per
    study: study_id, cells_localised, missing_series, error) gives each study's 25 rows: from the prior with
    reason study_failed (or not_placed when nothing was placed) where the whole study failed, else source
    ``unrecorded``, since it did not say which rows came from which model."""
    report = pd.read_csv(path, keep_default_na=False)
    if "source" in report.columns:
        missing = [c for c in REPORT_COLUMNS if c not in report.columns]
        if missing:
            raise DataError(f"{path} lacks columns {missing}")
        return report
    rows = []
    for r in report.itertuples(index=False):
        sid = int(r.study_id)
        failed = bool(r.error) or int(r.cells_localised) == 0
        source, reason = (PRIOR, STUDY_FAILED if r.error else NOT_PLACED) if failed else ("unrecorded", "")
        detail = (r.error or f"no usable {r.missing_series or 'series'}") if failed else ""
        rows += [{"row_id": rid, "study_id": sid, "group": schema.group_of_column(rid.split("_", 1)[1]),
                  "source": source, "reason": reason, "detail": detail} for rid in schema.study_row_ids(sid)]
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


def provenance_counts(report: pd.DataFrame) -> pd.DataFrame:
    """Rows and studies per source and reason, commonest first: what the pipeline prints at its end."""
    counts = (report.groupby(["source", "reason"], sort=False)
              .agg(rows=("row_id", "size"), studies=("study_id", "nunique")).reset_index())
    return counts.sort_values(["rows", "source"], ascending=[False, True], kind="stable").reset_index(drop=True)


def provenance_markdown(counts: pd.DataFrame) -> str:
    """:func:`provenance_counts` as a markdown table."""
    lines = ["| source | reason | rows | studies |", "|---|---|---|---|"]
    lines += [f"| {r.source} | {r.reason or '-'} | {r.rows} | {r.studies} |" for r in counts.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def weights_state(weights_dir: Path, loc_dir: Path, cfg: PredictConfig) -> dict[str, Any]:
    """The state of everything prediction reads from the weights folder: the localiser, the spec, and
    each experiment's config, prior and fold checkpoints."""
    spec, folders = ensemble_plan(weights_dir, cfg)
    return {"localizer": [file_state(f) for f in sorted(loc_dir.glob("*")) if f.is_file()],
            "spec": file_state(weights_dir / cfg.ensemble), "blend": spec.to_dict(),
            "experiments": {n: [file_state(f) for f in [d / CONFIG_YAML, d / PRIOR_JSON,
                                                          *sorted(d.glob(f"fold*/{BEST_PT}"))]]
                            for n, d in folders.items()}}


def prediction_inputs(data_dir: Path, weights_dir: Path, loc_dir: Path, cfg: PredictConfig) -> dict[str, Any]:
    """What a submission is made from: the settings, the weights and the test data."""
    return {"config": {**dataclasses.asdict(cfg), "tta": stamp_value(cfg.tta)}, "report": REPORT_FORMAT,
            "weights": weights_state(weights_dir, loc_dir, cfg),
            "series": file_state(data_dir / schema.TEST_SERIES_CSV),
            "sample": file_state(data_dir / schema.SAMPLE_SUBMISSION_CSV),
            "images": tree_state(images_dir(data_dir, "test"))}
