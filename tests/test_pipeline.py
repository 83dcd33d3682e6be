"""The pipeline resumes: a rerun on finished outputs trains nothing and writes the same submission, an
interrupted localiser resumes at its first unfinished fold, and a changed input redoes what it needs and
no more. On the smoke data with a tiny model, tiny localiser and 32 px crops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lsdc.crops.training_set
import lsdc.ensemble.step
import lsdc.inference
import lsdc.localize.train
import lsdc.localized_oof
import lsdc.train.run
from lsdc import config as config_mod
from lsdc import metric, schema
from lsdc.ensemble import FOLD_AVERAGES, SPEC_JSON, blend_folds, load_ensemble
from lsdc.errors import DataError
from lsdc.experiment import fill_with_prior, load_prior
from lsdc.inference import FOLD_PREDICTIONS_CSV, PRIOR, REPORT_CSV, PredictConfig, predict_submission, read_report
from lsdc.labeled_test import SHIPPED, fold_frames_of
from lsdc.localize import LOCALIZER_PT, OOF_POINTS_CSV, VIEWS, LocalizerExperiment, train_localizer
from lsdc.pipeline import TEST_SCORES_CSV, PipelineConfig, StepRef, run_pipeline
from tiny import tiny_experiment, tiny_localizer

TINY = tiny_experiment("tiny", epochs=1, patience=1)
LOCALIZER = tiny_localizer("localizer_tiny", epochs=2)


def _pipeline(root: Path, experiments: list[StepRef]) -> PipelineConfig:
    return PipelineConfig(experiments=experiments, localizer=StepRef("loc.yaml"),
                          submission=str(root / "submission.csv"))


class Calls:
    """Counts calls of the expensive functions (and can forbid them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, forbid: bool = False) -> None:
        self.counts: dict[str, int] = {}
        self.experiments: list[str] = []
        for module, name in ((lsdc.train.run, "train_fold"), (lsdc.localize.train, "fit_view"),
                             (lsdc.ensemble.step, "fit_ensemble"), (lsdc.inference, "classify"),
                             (lsdc.localized_oof, "classify"), (lsdc.crops.training_set, "training_requests")):
            monkeypatch.setattr(module, name, self._wrap(f"{module.__name__}.{name}", getattr(module, name), forbid))

    def _wrap(self, key, fn, forbid):
        def wrapped(*args, **kwargs):
            if forbid:
                raise AssertionError(f"{key} called on a rerun with nothing changed")
            self.counts[key] = self.counts.get(key, 0) + 1
            if key == "lsdc.train.run.train_fold":
                self.experiments.append(args[0].experiment)
            return fn(*args, **kwargs)
        return wrapped

    def __getitem__(self, key: str) -> int:
        return self.counts.get(key, 0)


@pytest.fixture(scope="module")
def first_run(smoke_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    (root / "tiny.yaml").write_text(TINY)
    (root / "loc.yaml").write_text(LOCALIZER)
    out = root / "outputs"
    result = run_pipeline(_pipeline(root, [StepRef("tiny.yaml")]), smoke_run["data"], out, root)
    return {"root": root, "data": smoke_run["data"], "out": out, "result": result,
            "submission": (root / "submission.csv").read_bytes()}


def _copy(first_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the finished run (outputs and configs) to change without touching the original."""
    root = tmp_path / "run"
    shutil.copytree(first_run["root"], root, ignore=shutil.ignore_patterns("outputs"))
    shutil.copytree(first_run["out"], root / "outputs", copy_function=shutil.copy2)
    return root, root / "outputs"


def test_rerun_on_finished_outputs_does_nothing_and_same_submission(first_run, monkeypatch):
    Calls(monkeypatch, forbid=True)
    root = first_run["root"]
    result = run_pipeline(_pipeline(root, [StepRef("tiny.yaml")]), first_run["data"], first_run["out"], root)
    assert (root / "submission.csv").read_bytes() == first_run["submission"]
    assert result["spec"] == first_run["result"]["spec"]


def test_interrupted_localizer_resumes_from_finished_folds(first_run, tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    out.mkdir()
    shutil.copy2(first_run["out"] / "folds_2.csv", out)
    exp = config_mod.load(LocalizerExperiment, first_run["root"] / "loc.yaml")
    real_evaluate, seen = lsdc.localize.train.evaluate, []

    def crash_in_second_fold(*args, **kwargs):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(lsdc.localize.train, "evaluate", crash_in_second_fold)
    with pytest.raises(KeyboardInterrupt):
        train_localizer(exp, first_run["data"], out)
    folder = out / exp.name
    assert (folder / "fold0" / LOCALIZER_PT).is_file() and not (folder / LOCALIZER_PT).exists()
    monkeypatch.setattr(lsdc.localize.train, "evaluate", real_evaluate)
    calls = Calls(monkeypatch)
    metrics = train_localizer(exp, first_run["data"], out)
    assert calls["lsdc.localize.train.fit_view"] == len(VIEWS)       # fold 1 only (every view); fold 0 was kept
    assert (folder / LOCALIZER_PT).is_file()
    # The resumed localiser is the one an uninterrupted run trained (the pipeline's, same folds and data).
    pd.testing.assert_frame_equal(pd.read_csv(folder / OOF_POINTS_CSV),
                                  pd.read_csv(first_run["out"] / exp.name / OOF_POINTS_CSV))
    assert metrics["median_error_mm"] == first_run["result"]["localizer_median_error_mm"]


def test_another_experiment_list_redoes_only_what_it_needs(first_run, tmp_path, monkeypatch):
    root, out = _copy(first_run, tmp_path)
    (root / "tiny48.yaml").write_text(tiny_experiment("tiny48", size=48))
    calls = Calls(monkeypatch)
    run_pipeline(_pipeline(root, [StepRef("tiny.yaml"), StepRef("tiny48.yaml")]), first_run["data"], out, root)
    assert set(calls.experiments) == {"attention_tiny48"}          # the first experiment was not retrained
    assert calls["lsdc.localize.train.fit_view"] == 0                    # nor the localiser
    assert calls["lsdc.crops.training_set.training_requests"] == 1              # crops cut for the new size only
    assert calls["lsdc.ensemble.step.fit_ensemble"] == 2                # annotated and localised fits redone
    assert calls["lsdc.localized_oof.classify"] > 0 and calls["lsdc.inference.classify"] > 0
    spec = load_ensemble(out / SPEC_JSON)
    assert set(spec.experiments) == {"attention_tiny", "attention_tiny48"}   # the new model was a candidate
    changed = (root / "submission.csv").read_bytes() != first_run["submission"]
    assert changed == ("attention_tiny48" in spec.models)   # the submission changed exactly when it shipped it


def test_predict_finds_what_the_pipeline_made(first_run, tmp_path):
    """After the pipeline, 05_predict's defaults find its only localiser and its ensemble."""
    sub = predict_submission(first_run["data"], first_run["out"], tmp_path / "s.csv", PredictConfig(),
                             show_progress=False)
    assert (tmp_path / "s.csv").read_bytes() == first_run["submission"]
    assert len(sub) > 0
    second = first_run["out"] / "localizer_copy"
    shutil.copytree(first_run["out"] / "localizer_tiny", second)
    try:
        with pytest.raises(DataError, match="localizer_copy.*localizer_tiny|localizer_tiny.*localizer_copy"):
            predict_submission(first_run["data"], first_run["out"], tmp_path / "t.csv", PredictConfig(),
                               show_progress=False)
    finally:
        shutil.rmtree(second)


def test_labeled_test_studies_get_the_labeled_test_table(first_run):
    """On data with test labels the pipeline keeps every fold model's test predictions; the submission is
    their blend by the configured fold average, and the labeled test table scores it (with its interval) next to
    each model alone and the other fold averages, all paired on the same resampled test studies."""
    root, data = first_run["root"], first_run["data"]
    result, spec = first_run["result"], first_run["result"]["spec"]
    sub = pd.read_csv(root / "submission.csv")
    table = pd.read_csv(first_run["out"] / TEST_SCORES_CSV).set_index("model")
    assert table.equals(result["test_scores"].set_index("model"))
    solution = metric.load_solution(data / schema.TEST_SOLUTION_CSV)
    assert table.loc[SHIPPED, "score"] == pytest.approx(metric.score(solution, sub)["score"], abs=1e-12)
    assert table.loc[SHIPPED, "score_lo"] < table.loc[SHIPPED, "score"] < table.loc[SHIPPED, "score_hi"]
    assert (table.vs == SHIPPED).all() and table.loc[SHIPPED, "diff"] == 0.0
    assert set(spec.models) <= set(table.index)
    rule = PredictConfig().fold_average
    assert {f"{SHIPPED} with fold_average={r}" for r in FOLD_AVERAGES if r != rule} <= set(table.index)
    folds = pd.read_csv(root / FOLD_PREDICTIONS_CSV)
    assert set(folds.fold) == {0, 1}
    prior = load_prior([first_run["out"] / m for m in spec.models])
    rebuilt = fill_with_prior(sub.row_id.tolist(), blend_folds(spec, fold_frames_of(folds), rule), prior)
    np.testing.assert_allclose(rebuilt[list(schema.SEVERITY_COLUMNS)], sub[list(schema.SEVERITY_COLUMNS)],
                               atol=1e-12)


def test_the_pipeline_counts_the_submission_rows_per_source_and_reason(first_run):
    """The pipeline's result (printed at its end) counts every submitted row by where it came from, as its
    predict_report.csv says row by row: here every row from the tiny experiment's two fold models."""
    counts = first_run["result"]["provenance"]
    sub = pd.read_csv(first_run["root"] / "submission.csv")
    report = read_report(first_run["root"] / REPORT_CSV)
    assert report.row_id.tolist() == sub.row_id.tolist()
    assert counts.rows.sum() == len(sub) == 25 * report.study_id.nunique()
    expected = report.groupby(["source", "reason"]).agg(rows=("row_id", "size"), studies=("study_id", "nunique"))
    assert counts.set_index(["source", "reason"]).sort_index().equals(expected.sort_index())
    assert set(report.source) <= {"attention_tiny[0,1]", PRIOR}
    assert (report.reason[report.source == PRIOR] != "").all()
