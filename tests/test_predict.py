"""Inference and the submission, end to end on fresh synthetic data (the localiser: tests/test_localize.py)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lsdc.crops.study
import lsdc.inference
import lsdc.localized_oof
from lsdc import schema
from lsdc.crops import INDEX_CSV, load_crop
from lsdc.data import load_train_labels
from lsdc.ensemble import EnsembleConfig, build_ensemble, equal_spec, load_ensemble, save_ensemble
from lsdc.errors import ConfigError, DataError, NonFiniteOutput
from lsdc.experiment import (
    BEST_PT,
    CONFIG_YAML,
    OOF_CSV,
    PRIOR_JSON,
    PROB_FLOOR,
    VAL_PREDS_CSV,
    fill_with_prior,
    load_experiment_models,
    prior_probabilities,
)
from lsdc.inference import (
    CROP_FAILED,
    PRIOR,
    REASONS,
    REPORT_COLUMNS,
    REPORT_CSV,
    PredictConfig,
    classify,
    ensemble_plan,
    predict_submission,
    read_report,
)
from lsdc.localize import NO_SERIES, SERIES_UNREADABLE
from lsdc.localized_oof import cost_markdown, localized_oof, read_cost_table
from lsdc.metric import score, solution_from_labels, validate_submission
from lsdc.pack import pack


@pytest.fixture(scope="module")
def submission(smoke_run, smoke_localizer, tmp_path_factory):
    out = smoke_run["out"]
    build_ensemble(out, load_train_labels(smoke_run["data"]),
                   EnsembleConfig(experiments=[smoke_run["cfg"].experiment]))
    path = tmp_path_factory.mktemp("sub") / "submission.csv"
    sub = predict_submission(smoke_run["data"], out, path, PredictConfig(localizer=smoke_localizer["name"]),
                             show_progress=False)
    return path, sub


def test_submission_matches_sample_row_for_row(smoke_run, submission):
    path, sub = submission
    sample = pd.read_csv(smoke_run["data"] / schema.SAMPLE_SUBMISSION_CSV)
    written = pd.read_csv(path)
    assert written.row_id.tolist() == sample.row_id.tolist()
    validate_submission(written, required_row_ids=sample.row_id.tolist())
    probs = written[list(schema.SEVERITY_COLUMNS)].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_packed_weights_predict_the_same_without_settings(smoke_run, smoke_localizer, submission, tmp_path):
    """A Kaggle pack predicts offline with the default settings (the localiser's name comes from its
    manifest) and gives the same submission as the weights it was packed from."""
    path, _ = submission
    packed = pack(smoke_run["out"], tmp_path / "pack", PredictConfig(localizer=smoke_localizer["name"]))
    assert (packed / smoke_localizer["name"] / "localizer.pt").is_file()
    again = predict_submission(smoke_run["data"], packed, tmp_path / "s.csv", PredictConfig(), show_progress=False)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), pd.read_csv(path), check_exact=False, atol=1e-6)


def test_submission_beats_the_prior_on_the_test_labels(smoke_run, submission):
    path, _ = submission
    solution = pd.read_csv(smoke_run["data"] / schema.TEST_SOLUTION_CSV)
    sub = pd.read_csv(path)
    prior = fill_with_prior(sub.row_id.tolist(), None, prior_probabilities(load_train_labels(smoke_run["data"])))
    ours, base = score(solution, sub)["score"], score(solution, prior)["score"]
    assert ours < base - 0.1, (ours, base)


def test_localized_oof_scores_held_out_localization(smoke_run, smoke_localizer, submission, tmp_path):
    """Localised OOF: the annotated column is the experiment's own OOF score on the same studies, the
    localised one comes from held-out localiser points and still beats the class prior clearly; both with
    intervals around them, and the cost of localisation is their paired difference."""
    name = smoke_run["cfg"].experiment
    cfg = PredictConfig(localizer=smoke_localizer["name"], experiments=[name])
    table = localized_oof(smoke_run["data"], smoke_run["out"], cfg, tmp_path / "localized_oof_scores.csv",
                          show_progress=False).set_index("model")
    assert list(table.index) == [name]
    points = pd.read_csv(smoke_run["out"] / smoke_localizer["name"] / "oof_points.csv")
    labels = load_train_labels(smoke_run["data"])
    labels = labels[labels.study_id.isin(points.study_id.unique())]
    solution = solution_from_labels(labels)
    oof = pd.read_csv(smoke_run["out"] / name / "oof.csv")
    row = table.loc[name]
    assert row.annotated_score == pytest.approx(score(solution, oof)["score"], abs=1e-9)
    own = pd.read_csv(smoke_run["out"] / name / "oof_localized.csv")  # what 04_ensemble can fit on
    assert len(own) == 25 * labels.study_id.nunique()
    assert row.localized_score == pytest.approx(score(solution, own)["score"], abs=1e-9)
    prior = fill_with_prior(own.row_id.tolist(), None, prior_probabilities(load_train_labels(smoke_run["data"])))
    assert row.localized_score < score(solution, prior)["score"] - 0.1, row
    assert row.cost == pytest.approx(row.localized_score - row.annotated_score, abs=1e-12)
    for kind in ("localized", "annotated"):
        assert row[f"{kind}_lo"] < row[f"{kind}_score"] < row[f"{kind}_hi"]
    assert row.cost_lo <= row.cost <= row.cost_hi
    assert pd.read_csv(tmp_path / "localized_oof_scores.csv").model.tolist() == [name]


def _test_data(smoke_run: dict, dest: Path, n_studies: int | None = None) -> tuple[Path, list[int]]:
    """A copy of the smoke data without its training images; with ``n_studies``, its test CSVs cut to the
    first that many test studies (prediction reads only the listed ones). Returns it and its test studies."""
    shutil.copytree(smoke_run["data"], dest, ignore=shutil.ignore_patterns(schema.TRAIN_IMAGES))
    series = pd.read_csv(dest / schema.TEST_SERIES_CSV)
    studies = sorted(series.study_id.unique())[:n_studies]
    series[series.study_id.isin(studies)].to_csv(dest / schema.TEST_SERIES_CSV, index=False)
    sample = pd.read_csv(dest / schema.SAMPLE_SUBMISSION_CSV)
    sample[sample.row_id.str.split("_").str[0].astype(int).isin(studies)].to_csv(
        dest / schema.SAMPLE_SUBMISSION_CSV, index=False)
    return dest, [int(s) for s in studies]


def _group_prior(sub: pd.DataFrame, prior: dict[str, np.ndarray]) -> np.ndarray:
    """The training prior of each submission row's condition group, (n, 3)."""
    return np.array([prior[schema.group_of_column(r.split("_", 1)[1])] for r in sub.row_id])


def test_broken_studies_still_get_all_rows(smoke_run, smoke_localizer, submission, tmp_path, caplog, monkeypatch):
    """Four studies broken four ways, each failure recorded where it happened: Axial T2 listed but gone from
    disk (its 10 subarticular rows from the prior, "series_unreadable" with the reader's message), Sagittal
    T1 not listed (10 foraminal rows, "no_series"), every spinal crop failing after its point was placed (5
    rows, "crop_failed" and why), one corrupt slice (skipped; all rows from the model). Every other row
    comes from the model's two folds, and the report's prior rows are exactly the submission's prior rows."""
    data, studies = _test_data(smoke_run, tmp_path / "data")
    series = pd.read_csv(data / schema.TEST_SERIES_CSV)
    gone, corrupt, no_t1, no_crop = studies[:4]
    axial = series[(series.study_id == gone) & (series.series_description == schema.AXIAL_T2)].series_id
    for sid in axial:  # a missing series: listed in the CSV, absent on disk
        shutil.rmtree(data / schema.TEST_IMAGES / str(gone) / str(sid))
    t2 = series[(series.study_id == corrupt) & (series.series_description == schema.SAG_T2)].series_id.iloc[0]
    files = sorted((data / schema.TEST_IMAGES / str(corrupt) / str(t2)).glob("*.dcm"))
    files[len(files) // 2].write_bytes(b"\x00garbage")
    series[~((series.study_id == no_t1) & (series.series_description == schema.SAG_T1))].to_csv(
        data / schema.TEST_SERIES_CSV, index=False)
    real_crop, spinal = lsdc.crops.crop_roi, schema.condition_for("spinal")

    def spinal_crops_fail(series, index, x, y, size_mm, cfg, window):
        if series.study_id == no_crop and size_mm == cfg.mm(spinal):
            raise DataError("injected: a neighbour slice cannot be decoded")
        return real_crop(series, index, x, y, size_mm, cfg, window)

    monkeypatch.setattr(lsdc.crops.study, "crop_roi", spinal_crops_fail)
    caplog.set_level(logging.WARNING)
    sub = predict_submission(data, smoke_run["out"], tmp_path / "s.csv",
                             PredictConfig(localizer=smoke_localizer["name"]), show_progress=False)
    sample = pd.read_csv(data / schema.SAMPLE_SUBMISSION_CSV)
    assert sub.row_id.tolist() == sample.row_id.tolist()
    for study in (gone, corrupt):
        rows = sub[sub.row_id.str.startswith(f"{study}_")]
        assert len(rows) == 25 and np.isfinite(rows[list(schema.SEVERITY_COLUMNS)].to_numpy()).all()
    prior = prior_probabilities(load_train_labels(smoke_run["data"]))
    sub_rows = sub[sub.row_id.str.startswith(f"{gone}_") & sub.row_id.str.contains("subarticular")]
    np.testing.assert_allclose(sub_rows[list(schema.SEVERITY_COLUMNS)].to_numpy(),
                               np.tile(prior["subarticular"], (10, 1)))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(gone) in messages and str(corrupt) in messages

    report = read_report(tmp_path / REPORT_CSV)
    assert report.row_id.tolist() == sub.row_id.tolist()
    expected = {(gone, "subarticular"): (SERIES_UNREADABLE, "does not exist"),
                (no_t1, "foraminal"): (NO_SERIES, "the study lists no Sagittal T1 series"),
                (no_crop, "spinal"): (CROP_FAILED, "injected: a neighbour slice cannot be decoded")}
    from_prior = report[report.source == PRIOR]
    assert sorted(from_prior.groupby(["study_id", "group"]).size().items()) == sorted(
        [((gone, "subarticular"), 10), ((no_t1, "foraminal"), 10), ((no_crop, "spinal"), 5)])
    for (study, group), (reason, detail) in expected.items():
        rows = from_prior[(from_prior.study_id == study) & (from_prior.group == group)]
        assert (rows.reason == reason).all(), rows.reason.unique()
        assert rows.detail.str.contains(detail, regex=False).all(), rows.detail.unique()
    model = f"{smoke_run['cfg'].experiment}[0,1]"
    assert (report.source[report.source != PRIOR] == model).all() and (report.source == model).sum() == len(sub) - 25
    probs, group_prior = sub[list(schema.SEVERITY_COLUMNS)].to_numpy(), _group_prior(sub, prior)
    is_prior = (report.source == PRIOR).to_numpy()
    np.testing.assert_allclose(probs[is_prior], group_prior[is_prior], atol=PROB_FLOOR)
    assert not np.isclose(probs[~is_prior], group_prior[~is_prior], atol=1e-6).all(1).any()


def test_out_of_fold_predictions_are_what_inference_gives(smoke_run):
    """Parity: a held-out crop classified at test time (its fold's model, that fold's normalisation,
    float32) gets exactly the probabilities written in the out-of-fold predictions."""
    exp = smoke_run["out"] / smoke_run["cfg"].experiment
    models = load_experiment_models(exp)
    crops_dir = smoke_run["out"] / smoke_run["cfg"].crops.dirname
    index = pd.read_csv(crops_dir / INDEX_CSV, keep_default_na=False)
    assert len({tuple(f.mean) for f in models.folds}) == 2    # the folds were trained with different statistics
    for fold in (0, 1):
        val = pd.read_csv(exp / f"fold{fold}" / VAL_PREDS_CSV).head(12).merge(
            index[["study_id", "condition", "level", "path"]], on=["study_id", "condition", "level"])
        held_out = models.only_fold(fold)
        for r in val.itertuples(index=False):
            crop = load_crop(crops_dir / r.path, smoke_run["cfg"].crops.n_slices)
            probs = classify(held_out, {(r.condition, r.level): crop}, torch.device("cpu"), [], 8)
            assert list(probs) == [fold]
            np.testing.assert_allclose(probs[fold][(r.condition, r.level)], [r.normal_mild, r.moderate, r.severe],
                                       atol=2e-6)


def test_a_systematic_failure_stops_prediction(smoke_run, smoke_localizer, tmp_path):
    """When most test studies cannot be read, prediction stops with an error naming them instead of
    writing an all-prior submission."""
    data = tmp_path / "data"
    shutil.copytree(smoke_run["data"], data, ignore=shutil.ignore_patterns(schema.TRAIN_IMAGES))
    studies = sorted(p.name for p in (data / schema.TEST_IMAGES).iterdir())
    for study in studies[1:]:
        for f in (data / schema.TEST_IMAGES / study).rglob("*.dcm"):
            f.write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=rf"{len(studies) - 1} of {len(studies)} test studies.*{studies[1]}"):
        predict_submission(data, smoke_run["out"], tmp_path / "s.csv",
                           PredictConfig(localizer=smoke_localizer["name"]), show_progress=False)
    assert not (tmp_path / "s.csv").exists()


def test_a_study_without_sagittal_t2_gets_spinal_predictions_from_t1(smoke_run, smoke_localizer, tmp_path):
    """The canal is found on Sagittal T1 when a study has no T2/STIR: its spinal rows come from the models
    (cut on T1), not from the prior; its other rows are unaffected by the missing series."""
    data = tmp_path / "data"
    shutil.copytree(smoke_run["data"], data, ignore=shutil.ignore_patterns(schema.TRAIN_IMAGES))
    series = pd.read_csv(data / schema.TEST_SERIES_CSV)
    study = sorted(series.study_id.unique())[0]
    t2 = series[(series.study_id == study) & (series.series_description == schema.SAG_T2)].series_id
    assert len(t2) == 1
    shutil.rmtree(data / schema.TEST_IMAGES / str(study) / str(t2.iloc[0]))
    build_ensemble(smoke_run["out"], load_train_labels(smoke_run["data"]),
                   EnsembleConfig(experiments=[smoke_run["cfg"].experiment]))
    sub = predict_submission(data, smoke_run["out"], tmp_path / "s.csv",
                             PredictConfig(localizer=smoke_localizer["name"]), show_progress=False)
    prior = prior_probabilities(load_train_labels(smoke_run["data"]))["spinal"]
    spinal = sub[sub.row_id.str.startswith(f"{study}_spinal")]
    assert len(spinal) == 5
    assert not np.allclose(spinal[list(schema.SEVERITY_COLUMNS)].to_numpy(), np.tile(prior, (5, 1)), atol=1e-4)
    report = read_report(tmp_path / REPORT_CSV)
    assert (report[report.study_id == study].source == f"{smoke_run['cfg'].experiment}[0,1]").sum() == 25


def test_the_report_says_where_every_row_came_from(smoke_run, submission):
    """predict_report.csv beside the submission: one line per submitted row in its order, 25 per test study,
    each from the experiment's two fold models (the intact smoke studies place and crop every cell)."""
    path, sub = submission
    report = read_report(path.with_name(REPORT_CSV))
    assert list(report.columns) == list(REPORT_COLUMNS)
    assert report.row_id.tolist() == sub.row_id.tolist()
    assert report.groupby("study_id").size().tolist() == [25] * 6
    assert report.source.unique().tolist() == [f"{smoke_run['cfg'].experiment}[0,1]"]
    assert (report.reason == "").all() and (report.detail == "").all()
    assert report.group.value_counts().to_dict() == {"foraminal": 60, "subarticular": 60, "spinal": 30}


def test_an_older_localization_cost_table_reads_with_today_s_columns(tmp_path):
    """Output folders written when the columns were spelled ``localised_*`` still print their cost table."""
    old = tmp_path / "localized_oof_scores.csv"
    old.write_text("model,localised_score,localised_lo,localised_hi,annotated_score,annotated_lo,annotated_hi,cost,"
                   "cost_lo,cost_hi\nm,0.5,0.4,0.6,0.45,0.35,0.55,0.05,0.01,0.09\n")
    table = read_cost_table(old)
    assert list(table.columns[:4]) == ["model", "localized_score", "localized_lo", "localized_hi"]
    assert "| m | 0.5000 [0.4000, 0.6000] | 0.4500 [0.3500, 0.5500] | +0.0500 [+0.0100, +0.0900] |" in \
        cost_markdown(table)


def test_an_older_report_is_read_as_rows(tmp_path):
    """A report of the per-study format that came before per-row provenance still reads, as 25 rows per
    study: a failed study's rows from the prior with its error, the others' source unrecorded."""
    old = tmp_path / REPORT_CSV
    old.write_text("study_id,cells_localised,missing_series,error\n7,25,,\n8,0,,series folder gone\n"
                   "9,0,Sagittal T1;Sagittal T2/STIR,\n")
    report = read_report(old)
    assert len(report) == 75 and report.row_id.tolist()[:25] == schema.study_row_ids(7)
    by_study = report.groupby("study_id")[["source", "reason", "detail"]].agg(lambda c: sorted(set(c)))
    assert by_study.loc[7].tolist() == [["unrecorded"], [""], [""]]
    assert by_study.loc[8].tolist() == [[PRIOR], ["study_failed"], ["series folder gone"]]
    assert by_study.loc[9].tolist() == [[PRIOR], ["not_placed"], ["no usable Sagittal T1;Sagittal T2/STIR"]]
    assert set(report.reason) <= {"", *REASONS}


def test_no_axial_t2_anywhere_stops_prediction_naming_the_group(smoke_run, smoke_localizer, submission, tmp_path):
    """Every Axial T2 listed but gone: no study fails as a whole (each keeps its 15 sagittal rows), but every
    subarticular row would be the prior, a systematic failure that stops prediction naming the group."""
    data, studies = _test_data(smoke_run, tmp_path / "data", 2)
    series = pd.read_csv(data / schema.TEST_SERIES_CSV)
    for r in series[series.series_description == schema.AXIAL_T2].itertuples(index=False):
        shutil.rmtree(data / schema.TEST_IMAGES / str(r.study_id) / str(r.series_id))
    with pytest.raises(DataError, match=r"condition group subarticular: 20 of 20 rows \(2 of 2 studies\) got the "
                                        r"training prior .*max_failed_share=0.5\): series_unreadable x20 \(e\.g\. "
                                        r"series folder .* does not exist"):
        predict_submission(data, smoke_run["out"], tmp_path / "s.csv",
                           PredictConfig(localizer=smoke_localizer["name"]), show_progress=False)
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / REPORT_CSV).exists()


class _NaNOut(torch.nn.Module):
    """A fold model whose weights diverged: every logit NaN."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float("nan")


def _with_nan_folds(load, folds: set[int]):
    """``load_experiment_models`` whose given fold models give NaN."""
    def patched(*args, **kwargs):
        models = load(*args, **kwargs)
        for fm in models.folds:
            if fm.fold in folds:
                fm.model = _NaNOut(fm.model)
        return models
    return patched


def test_a_model_giving_nan_stops_prediction_naming_it(smoke_run, smoke_localizer, submission, tmp_path,
                                                        monkeypatch):
    """A fold model giving NaN is an error naming the experiment and fold, at prediction and in the localised
    OOF, not a model quietly absent (its rows left to the other fold, the other models or the prior)."""
    name = smoke_run["cfg"].experiment
    data, _ = _test_data(smoke_run, tmp_path / "data", 1)
    monkeypatch.setattr(lsdc.inference, "load_experiment_models",
                        _with_nan_folds(lsdc.inference.load_experiment_models, {1}))
    with pytest.raises(NonFiniteOutput, match=rf"experiment {name}, fold 1: non-finite probabilities .*"
                                              rf"remove {name}/fold1 and train it again"):
        predict_submission(data, smoke_run["out"], tmp_path / "s.csv",
                           PredictConfig(localizer=smoke_localizer["name"]), show_progress=False)
    assert not (tmp_path / "s.csv").exists()
    monkeypatch.setattr(lsdc.localized_oof, "load_experiment_models",
                        _with_nan_folds(lsdc.localized_oof.load_experiment_models, {0, 1}))
    written = (smoke_run["out"] / name / "oof_localized.csv")
    before = written.read_bytes() if written.is_file() else None
    with pytest.raises(NonFiniteOutput, match=rf"experiment {name}, fold [01]: non-finite"):
        localized_oof(smoke_run["data"], smoke_run["out"],
                      PredictConfig(localizer=smoke_localizer["name"], experiments=[name]), show_progress=False)
    assert (written.read_bytes() if written.is_file() else None) == before


def test_experiments_other_than_the_spec_s_models_are_an_error_saying_the_fix(smoke_run, smoke_localizer,
                                                                                submission, tmp_path):
    """Experiments that are not the spec's models (whose weights and temperatures were fitted for those) and
    a named spec that does not exist are errors that say which command or key fixes them; the same models in
    another order are the spec itself."""
    name = smoke_run["cfg"].experiment
    with pytest.raises(ConfigError, match=rf"\['{name}', 'resnet101_smoke'\] are not the models \['{name}'\] .*"
                                          rf"04_ensemble.py --set experiments=\[{name},resnet101_smoke\]"):
        predict_submission(smoke_run["data"], smoke_run["out"], tmp_path / "s.csv",
                           PredictConfig(localizer=smoke_localizer["name"], experiments=[name, "resnet101_smoke"]),
                           show_progress=False)
    save_ensemble(equal_spec(["a", "b"]), tmp_path / "ensemble.json")
    with pytest.raises(ConfigError, match=r"\['a'\] are not the models \['a', 'b'\].*leave 'experiments' unset"):
        ensemble_plan(tmp_path, PredictConfig(experiments=["a"]))
    with pytest.raises(ConfigError, match=r"nope.json not found: fit it with scripts/04_ensemble.py "
                                          r"--set spec_file=nope.json"):
        ensemble_plan(tmp_path, PredictConfig(ensemble="nope.json"))
    spec, folders = ensemble_plan(tmp_path, PredictConfig(experiments=["b", "a"]))
    assert spec == load_ensemble(tmp_path / "ensemble.json") and list(folders) == ["b", "a"]


def test_untrained_folds_are_an_error_saying_the_fix(smoke_run, smoke_localizer, tmp_path):
    """An experiment with a fold untrained (only fold 0 of 2 here) stops prediction and the localised OOF
    with the command that trains it, instead of fewer fold models or prior rows in the OOF."""
    name, out = smoke_run["cfg"].experiment, smoke_run["out"]
    weights = tmp_path / "weights"
    shutil.copytree(out / smoke_localizer["name"], weights / smoke_localizer["name"])
    shutil.copy2(out / "folds_2.csv", weights)
    for f in (CONFIG_YAML, PRIOR_JSON, OOF_CSV, f"fold0/{BEST_PT}"):
        (weights / name / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / name / f, weights / name / f)
    cfg = PredictConfig(localizer=smoke_localizer["name"], experiments=[name])
    fix = (rf"experiment {name}: fold\(s\) \[1\] of 2 not trained \(no {name}/fold1/{BEST_PT}\), so .* train them "
           rf"with scripts/02_train.py --config {re.escape(str(weights / name / CONFIG_YAML))} --set "
           r"folds.train_folds=null")
    with pytest.raises(DataError, match=fix):
        predict_submission(smoke_run["data"], weights, tmp_path / "s.csv", cfg, show_progress=False)
    with pytest.raises(DataError, match=fix):
        localized_oof(smoke_run["data"], weights, cfg, show_progress=False)
    assert not (tmp_path / "s.csv").exists() and not (weights / name / "oof_localized.csv").exists()
