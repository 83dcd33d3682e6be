"""Test-time localisation, inference and the submission, end to end on fresh synthetic data."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from lsdc import schema
from lsdc.crops import INDEX_CSV, load_crop
from lsdc.data import load_train_labels
from lsdc.dicom import Series, SliceHeader, load_series
from lsdc.ensemble import EnsembleConfig, build_ensemble
from lsdc.errors import DataError
from lsdc.experiment import VAL_PREDS_CSV, fill_with_prior, load_experiment_models, prior_probabilities
from lsdc.geometry import SliceGeometry
from lsdc.inference import PredictConfig, classify, predict_submission
from lsdc.localize import Stack, axial_candidates, decode, heatmap_loss
from lsdc.localized_oof import localized_oof
from lsdc.metric import score, solution_from_labels, validate_submission
from lsdc.pack import pack


def test_heatmap_loss_is_lowest_at_the_point():
    logits = torch.zeros(1, 16, 16)
    logits[0, 5, 9] = 8.0
    near = heatmap_loss(logits, torch.tensor([[9.0, 5.0]]), 1.0)
    far = heatmap_loss(logits, torch.tensor([[2.0, 12.0]]), 1.0)
    assert float(near) < float(far)


def test_decode_finds_the_peak_to_a_fraction_of_a_cell():
    ys, xs = np.mgrid[:24, :24]
    maps = np.stack([-((xs - 7.3) ** 2 + (ys - 15.6) ** 2) / 2.0, -((xs - 20.0) ** 2 + (ys - 2.0) ** 2) / 2.0])
    np.testing.assert_allclose(decode(maps), [[7.3, 15.6], [20.0, 2.0]], atol=0.05)


def _axial_stack(z_planes: list[float]) -> Stack:
    """A Stack over axial slices at the given heights, without decoding any pixels."""
    slices = [SliceHeader(path=None, instance_number=i + 1, slice_thickness=None, spacing_between_slices=None,
                          series_description=None, photometric="MONOCHROME2",
                          geometry=SliceGeometry((-40.0, -40.0, z), (1, 0, 0, 0, 1, 0), (0.5, 0.5), 160, 160))
              for i, z in enumerate(z_planes)]
    stack = Stack.__new__(Stack)
    stack.series, stack.size, stack.stride = Series(1, 7, slices), 64, 2
    stack.images = np.zeros((len(slices), 64, 64), np.uint8)
    stack.maps = [(160 / 64, 160 / 64, 0.5 * 160 / 64 - 0.5, 0.5 * 160 / 64 - 0.5)] * len(slices)
    return stack


def test_axial_candidates_are_the_planes_near_the_level_over_every_series():
    """Planes at z = 0, 4, ..., 20 mm in one series and z = 30, 34 in another; the level's canal point at
    z = 9 (x, y inside both images): within 4.5 mm are z = 8 and 12; within 24 mm everything below 34;
    a point outside the images has no candidate."""
    stacks = [_axial_stack([0.0, 4.0, 8.0, 12.0, 16.0, 20.0]), _axial_stack([30.0, 34.0])]
    point = np.array([0.0, 0.0, 9.0])
    assert axial_candidates(stacks, point, 4.5) == [(0, 2), (0, 3)]
    assert axial_candidates(stacks, point, 24.0) == [(0, i) for i in range(6)] + [(1, 0)]
    assert axial_candidates(stacks, np.array([500.0, 0.0, 9.0]), 4.5) == []


def test_stack_maps_pixels_to_heatmap_cells_and_back():
    stack = _axial_stack([0.0])
    u, v = stack.to_cells(0, 79.5, 39.5)          # image 160 px -> 64 px input -> 32 cells
    assert (u, v) == pytest.approx((15.5, 7.5))
    assert stack.to_pixels(0, u, v) == pytest.approx((79.5, 39.5))
    # Patient's left: larger x in LPS; slices of a sagittal series to the left of a point are positive.
    assert stack.lateral(np.array([-10.0, 0.0, 0.0]))[0] == pytest.approx(10.0 + (-40.0 + 79.5 * 0.5))


def test_localisation_on_held_out_studies(smoke_localizer):
    """Each view's detector, held out: the points lie close to the annotated ones, on the annotated
    slice most of the time, and every annotated cell is placed."""
    m = smoke_localizer["metrics"]
    # Floors well under what this fixture measures (36 studies, 12 epochs at 96 px), far above chance.
    floors = {"spinal": 0.8, "foraminal": 0.7, "subarticular": 0.5}
    for group, v in m["per_group"].items():
        ok = v["located"] > 0.95 and v["median_error_mm"] < 4.5 and v["slice_accuracy"] > floors[group]
        assert ok, (group, m["per_group"])


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


def test_localized_oof_scores_held_out_localisation(smoke_run, smoke_localizer, submission, tmp_path):
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
    assert row.localised_score == pytest.approx(score(solution, own)["score"], abs=1e-9)
    prior = fill_with_prior(own.row_id.tolist(), None, prior_probabilities(load_train_labels(smoke_run["data"])))
    assert row.localised_score < score(solution, prior)["score"] - 0.1, row
    assert row.cost == pytest.approx(row.localised_score - row.annotated_score, abs=1e-12)
    for kind in ("localised", "annotated"):
        assert row[f"{kind}_lo"] < row[f"{kind}_score"] < row[f"{kind}_hi"]
    assert row.cost_lo <= row.cost <= row.cost_hi
    assert pd.read_csv(tmp_path / "localized_oof_scores.csv").model.tolist() == [name]


def test_broken_studies_still_get_all_rows(smoke_run, smoke_localizer, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(smoke_run["data"], data, ignore=shutil.ignore_patterns(schema.TRAIN_IMAGES))
    series = pd.read_csv(data / schema.TEST_SERIES_CSV)
    studies = sorted(series.study_id.unique())
    gone, corrupt = studies[0], studies[1]
    axial = series[(series.study_id == gone) & (series.series_description == schema.AXIAL_T2)].series_id
    for sid in axial:  # a missing series: listed in the CSV, absent on disk
        shutil.rmtree(data / schema.TEST_IMAGES / str(gone) / str(sid))
    t2 = series[(series.study_id == corrupt) & (series.series_description == schema.SAG_T2)].series_id.iloc[0]
    files = sorted((data / schema.TEST_IMAGES / str(corrupt) / str(t2)).glob("*.dcm"))
    files[len(files) // 2].write_bytes(b"\x00garbage")
    caplog.set_level(logging.WARNING)
    sub = predict_submission(data, smoke_run["out"], tmp_path / "s.csv",
                             PredictConfig(localizer=smoke_localizer["name"]), show_progress=False)
    sample = pd.read_csv(data / schema.SAMPLE_SUBMISSION_CSV)
    assert sub.row_id.tolist() == sample.row_id.tolist()
    for study in (gone, corrupt):
        rows = sub[sub.row_id.str.startswith(f"{study}_")]
        assert len(rows) == 25 and np.isfinite(rows[list(schema.SEVERITY_COLUMNS)].to_numpy()).all()
    prior = prior_probabilities(load_train_labels(smoke_run["data"]))["subarticular"]
    sub_rows = sub[sub.row_id.str.startswith(f"{gone}_") & sub.row_id.str.contains("subarticular")]
    np.testing.assert_allclose(sub_rows[list(schema.SEVERITY_COLUMNS)].to_numpy(), np.tile(prior, (10, 1)))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(gone) in messages and str(corrupt) in messages


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
            probs = classify(held_out, {(r.condition, r.level): crop}, torch.device("cpu"), False, 8)
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


def test_a_region_of_interest_stack_is_centred_on_its_point(synthetic_dir):
    """A detector's region of interest: the patient point it is centred on lands in the middle of the input,
    pixels map to heatmap cells and back, and the region shows that place of the slice at the same scale."""
    row = pd.read_csv(synthetic_dir / schema.TRAIN_SERIES_CSV).query("series_description == 'Axial T2'").iloc[0]
    series = load_series(synthetic_dir / schema.TRAIN_IMAGES / str(row.study_id) / str(row.series_id))
    j = len(series) // 2
    g = series.slices[j].geometry
    centre = series.pixel_to_patient(j, g.cols * 0.4, g.rows * 0.55)
    stack = Stack(series, 64, 2, [centre] * len(series), 60.0)
    u, v = stack.to_cells(j, g.cols * 0.4, g.rows * 0.55)
    assert (u, v) == pytest.approx((15.5, 15.5), abs=1e-6)           # the middle of a 32 x 32 map
    assert stack.to_pixels(j, 3.0, 20.0) == pytest.approx(
        (g.cols * 0.4 + (3.0 * 2 + 0.5 - 31.5) * 60.0 / 64 / g.spacing[1],
         g.rows * 0.55 + (20.0 * 2 + 0.5 - 31.5) * 60.0 / 64 / g.spacing[0]))
    whole = Stack(series, 64, 2)
    assert stack.images.shape == whole.images.shape == (len(series), 64, 64)
    assert not np.array_equal(stack.images[j], whole.images[j])


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
    report = pd.read_csv(tmp_path / "predict_report.csv").set_index("study_id")
    assert report.loc[study, "cells_localised"] == 25 and "Sagittal T2/STIR" in report.loc[study, "missing_series"]
