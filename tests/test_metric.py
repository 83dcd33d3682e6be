"""The metric pinned to hand-computed values, its refusals, and the scoring script."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsdc import metric, schema
from lsdc.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "score_submission.py"

NORMAL, MODERATE, SEVERE = schema.SEVERITIES
SPINAL, LEFT_FORAMEN, RIGHT_FORAMEN, LEFT_SUBART, RIGHT_SUBART = schema.CONDITIONS
L1, L2, L3, L4, L5 = schema.LEVELS  # L1/L2 ... L5/S1
STUDY_A, STUDY_B = 1001, 2002
UNIFORM = (1 / 3, 1 / 3, 1 / 3)
ROW_ID, STUDY_ID = metric.ROW_ID, metric.STUDY_ID
NM_COL, MOD_COL, SEV_COL = schema.SEVERITY_COLUMNS
PROBS = list(schema.SEVERITY_COLUMNS)

# The labeled cells of the hand-worked example and the probabilities submitted for them.
# Every other cell of both studies is unlabeled and gets (0, 0, 1), which would cost -ln(eps) ~ 36
# on a Normal/Mild label if it were scored.
CELLS: dict[tuple[int, str, str], tuple[str, tuple[float, float, float]]] = {
    (STUDY_A, SPINAL, L1): (NORMAL, (0.7, 0.2, 0.1)),
    (STUDY_A, SPINAL, L4): (SEVERE, (0.2, 0.3, 0.5)),
    (STUDY_A, LEFT_FORAMEN, L5): (MODERATE, (0.25, 0.5, 0.25)),
    (STUDY_A, RIGHT_FORAMEN, L5): (NORMAL, (0.8, 0.1, 0.1)),
    (STUDY_A, LEFT_SUBART, L4): (SEVERE, (0.1, 0.1, 0.8)),
    (STUDY_B, SPINAL, L4): (MODERATE, (0.3, 0.6, 0.1)),
    (STUDY_B, SPINAL, L5): (NORMAL, (0.9, 0.05, 0.05)),
    (STUDY_B, RIGHT_SUBART, L3): (NORMAL, (0.6, 0.3, 0.1)),
}
UNLABELED_PRED = (0.0, 0.0, 1.0)

# Worked by hand from CELLS (weights 1/2/4 for Normal/Mild/Moderate/Severe):
EXPECTED_SPINAL = (1 * -math.log(0.7) + 4 * -math.log(0.5) + 2 * -math.log(0.6) + 1 * -math.log(0.9)) / (
    1 + 4 + 2 + 1
)
EXPECTED_FORAMINAL = (2 * -math.log(0.5) + 1 * -math.log(0.8)) / (2 + 1)
EXPECTED_SUBARTICULAR = (4 * -math.log(0.8) + 1 * -math.log(0.6)) / (4 + 1)
# any_severe_spinal: study A has a Severe level (label 1, weight 4), max severe = max(0.1, 0.5) = 0.5;
# study B has none (label 0), its max weight is the Moderate's 2, max severe = max(0.1, 0.05) = 0.1.
EXPECTED_ANY = (4 * -math.log(0.5) + 2 * -math.log(1 - 0.1)) / (4 + 2)
EXPECTED_SCORE = (EXPECTED_SPINAL + EXPECTED_FORAMINAL + EXPECTED_SUBARTICULAR + EXPECTED_ANY) / 4


def train_frame(cells: dict) -> pd.DataFrame:
    """A train.csv-shaped frame holding the given labels, other cells empty (NaN)."""
    studies = sorted({study for study, _, _ in cells})
    df = pd.DataFrame({STUDY_ID: studies})
    for col in schema.LABEL_COLUMNS:
        df[col] = pd.Series([np.nan] * len(studies), dtype=object)
    for (study, condition, level), (label, _) in cells.items():
        df.loc[df[STUDY_ID] == study, schema.label_column(condition, level)] = label
    return df[list(schema.TRAIN_COLUMNS)]


def submission_frame(studies: list[int], preds: dict[str, tuple[float, float, float]],
                     default: tuple[float, float, float] = UNLABELED_PRED) -> pd.DataFrame:
    """All 25 rows of each study; ``preds`` by row id, ``default`` elsewhere."""
    ids = [rid for s in studies for rid in schema.study_row_ids(s)]
    values = np.array([preds.get(rid, default) for rid in ids], dtype=np.float64)
    sub = pd.DataFrame(values, columns=PROBS)
    sub.insert(0, ROW_ID, ids)
    return sub


def example() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train-shaped labels, full submission) of the hand-worked example."""
    preds = {schema.row_id(*key): pred for key, (_, pred) in CELLS.items()}
    return train_frame(CELLS), submission_frame([STUDY_A, STUDY_B], preds)


def rid(study: int, condition: str, level: str) -> str:
    return schema.row_id(study, condition, level)


# ---------------------------------------------------------------- solution building


def test_solution_from_labels_rows_and_weights() -> None:
    train, _ = example()
    sol = metric.solution_from_labels(train)
    assert list(sol.columns) == list(metric.SOLUTION_COLUMNS)
    assert len(sol) == len(CELLS)  # empty cells give no row
    by_id = sol.set_index(ROW_ID)
    row = by_id.loc[rid(STUDY_A, SPINAL, L4)]
    assert row[PROBS].tolist() == [0.0, 0.0, 1.0]
    assert row[metric.SAMPLE_WEIGHT] == 4.0
    assert by_id.loc[rid(STUDY_A, LEFT_FORAMEN, L5), metric.SAMPLE_WEIGHT] == 2.0
    assert by_id.loc[rid(STUDY_B, RIGHT_SUBART, L3), metric.SAMPLE_WEIGHT] == 1.0


def test_solution_from_labels_unknown_value_names_study_and_column() -> None:
    train, _ = example()
    col = schema.label_column(RIGHT_FORAMEN, L2)
    train.loc[train[STUDY_ID] == STUDY_B, col] = "Mild"
    with pytest.raises(DataError, match=rf"study {STUDY_B} column {col}.*'Mild'"):
        metric.solution_from_labels(train)


def test_solution_from_labels_missing_column() -> None:
    train, _ = example()
    col = schema.LABEL_COLUMNS[7]
    with pytest.raises(DataError, match=col):
        metric.solution_from_labels(train.drop(columns=[col]))


def test_both_solution_formats_load_the_same(tmp_path: Path) -> None:
    train, sub = example()
    train.to_csv(tmp_path / "train.csv", index=False)
    metric.solution_from_labels(train).to_csv(tmp_path / "solution.csv", index=False)
    from_train = metric.load_solution(tmp_path / "train.csv")
    from_scoring = metric.load_solution(tmp_path / "solution.csv")
    pd.testing.assert_frame_equal(from_train, from_scoring)
    assert metric.score(from_train, sub) == metric.score(from_scoring, sub) == metric.score(train, sub)


def test_load_solution_refuses_other_shapes(tmp_path: Path) -> None:
    _, sub = example()
    sub.to_csv(tmp_path / "sub.csv", index=False)
    with pytest.raises(DataError, match=r"sub\.csv.*expected either.*sample_weight"):
        metric.load_solution(tmp_path / "sub.csv")
    with pytest.raises(DataError, match="not found"):
        metric.load_solution(tmp_path / "absent.csv")


def test_scoring_solution_must_be_one_hot() -> None:
    train, sub = example()
    sol = metric.solution_from_labels(train)
    sol.loc[0, MOD_COL] = 1.0  # row 0 is Normal/Mild: now two ones
    with pytest.raises(DataError, match=rf"not one-hot.*{sol.loc[0, ROW_ID]}"):
        metric.score(sol, sub)


# ---------------------------------------------------------------- hand-computed values


def test_hand_computed_example() -> None:
    train, sub = example()
    result = metric.score(metric.solution_from_labels(train), sub)
    assert tuple(result) == metric.RESULT_KEYS
    assert result["spinal"] == pytest.approx(EXPECTED_SPINAL, rel=1e-12)
    assert result["foraminal"] == pytest.approx(EXPECTED_FORAMINAL, rel=1e-12)
    assert result["subarticular"] == pytest.approx(EXPECTED_SUBARTICULAR, rel=1e-12)
    assert result["any_severe_spinal"] == pytest.approx(EXPECTED_ANY, rel=1e-12)
    assert result["score"] == pytest.approx(EXPECTED_SCORE, rel=1e-12)


def test_any_severe_scalar_weights_the_mean() -> None:
    train, sub = example()
    result = metric.score(train, sub, any_severe_scalar=2.0)
    expected = (EXPECTED_SPINAL + EXPECTED_FORAMINAL + EXPECTED_SUBARTICULAR + 2 * EXPECTED_ANY) / 5
    assert result["score"] == pytest.approx(expected, rel=1e-12)


def test_uniform_prediction_is_ln3_per_group() -> None:
    rng = np.random.default_rng(0)
    studies = [11, 12, 13]
    labels = rng.choice(list(schema.SEVERITIES), size=(len(studies), len(schema.LABEL_COLUMNS)))
    labels[0, :5] = NORMAL  # study 11: no severe spinal level, one Moderate
    labels[0, 2] = MODERATE
    labels[1, :5] = NORMAL  # study 12: all spinal Normal/Mild
    labels[2, :5] = NORMAL  # study 13: one severe spinal level
    labels[2, 3] = SEVERE
    train = pd.DataFrame(labels, columns=list(schema.LABEL_COLUMNS))
    train.insert(0, STUDY_ID, studies)
    result = metric.score(train, submission_frame(studies, {}, default=UNIFORM))
    for group in metric.GROUP_KEYS:
        assert result[group] == pytest.approx(math.log(3), rel=1e-12)
    # any severe: p = 1/3 everywhere; study 11 (label 0, weight 2), 12 (0, 1), 13 (1, 4)
    expected_any = (2 * -math.log(2 / 3) + 1 * -math.log(2 / 3) + 4 * -math.log(1 / 3)) / (2 + 1 + 4)
    assert result["any_severe_spinal"] == pytest.approx(expected_any, rel=1e-12)
    assert result["score"] == pytest.approx((3 * math.log(3) + expected_any) / 4, rel=1e-12)


def test_perfect_prediction_scores_zero() -> None:
    train, _ = example()
    preds = {
        schema.row_id(*key): tuple(float(k == schema.SEVERITY_INDEX[label]) for k in range(3))
        for key, (label, _) in CELLS.items()
    }
    result = metric.score(train, submission_frame([STUDY_A, STUDY_B], preds))
    for key in metric.RESULT_KEYS:
        assert 0.0 <= result[key] < 1e-12


def test_rows_are_normalised_before_scoring() -> None:
    train, sub = example()
    scaled = sub.copy()
    scaled[PROBS] *= 7.5  # every row sums to 7.5 now
    assert metric.score(train, scaled) == pytest.approx(metric.score(train, sub), rel=1e-12)
    twos = submission_frame([STUDY_A, STUDY_B], {}, default=(2.0, 2.0, 2.0))
    thirds = submission_frame([STUDY_A, STUDY_B], {}, default=UNIFORM)
    assert metric.score(train, twos) == pytest.approx(metric.score(train, thirds), rel=1e-12)


def test_unlabeled_cells_are_not_scored() -> None:
    train, sub = example()
    labeled = {schema.row_id(*key) for key in CELLS}
    other = sub.copy()
    unlabeled = ~other[ROW_ID].isin(labeled)
    other.loc[unlabeled, PROBS] = UNIFORM
    assert metric.score(train, other) == metric.score(train, sub)
    # ... and rows the solution lacks may be left out of the submission entirely.
    assert metric.score(train, sub[~unlabeled]) == metric.score(train, sub)


def test_any_severe_uses_max_severe_and_max_weight() -> None:
    cells = {
        (STUDY_A, SPINAL, L1): (NORMAL, (0.4, 0.3, 0.3)),  # the highest severe comes from a Normal row
        (STUDY_A, SPINAL, L2): (MODERATE, (0.2, 0.6, 0.2)),
        (STUDY_A, SPINAL, L3): (NORMAL, (0.9, 0.05, 0.05)),
        (STUDY_A, LEFT_FORAMEN, L1): (NORMAL, UNIFORM),
        (STUDY_A, LEFT_SUBART, L1): (NORMAL, UNIFORM),
        (STUDY_B, SPINAL, L1): (SEVERE, (0.5, 0.4, 0.1)),
        (STUDY_B, SPINAL, L5): (NORMAL, (0.3, 0.3, 0.4)),  # max severe of B, on its Normal row
    }
    preds = {schema.row_id(*key): pred for key, (_, pred) in cells.items()}
    result = metric.score(train_frame(cells), submission_frame([STUDY_A, STUDY_B], preds))
    # A: label 0, weight max(1, 2, 1) = 2, pred max(0.3, 0.2, 0.05) = 0.3
    # B: label 1, weight max(4, 1) = 4, pred max(0.1, 0.4) = 0.4
    expected = (2 * -math.log(1 - 0.3) + 4 * -math.log(0.4)) / (2 + 4)
    assert result["any_severe_spinal"] == pytest.approx(expected, rel=1e-12)


def test_probabilities_are_clipped_to_eps() -> None:
    assert metric.EPS == np.finfo(np.float64).eps
    train, sub = example()
    wrong = sub.copy()
    target = rid(STUDY_A, SPINAL, L4)  # labeled Severe
    wrong.loc[wrong[ROW_ID] == target, PROBS] = (1.0, 0.0, 0.0)
    result = metric.score(train, wrong)
    expected_spinal = (1 * -math.log(0.7) + 4 * -math.log(metric.EPS) + 2 * -math.log(0.6)
                       + 1 * -math.log(0.9)) / (1 + 4 + 2 + 1)
    assert result["spinal"] == pytest.approx(expected_spinal, rel=1e-12)
    assert math.isfinite(result["score"])


def test_matches_sklearn_log_loss_on_random_data() -> None:
    """Cross-check against the library the official metric calls (where it is installed)."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    studies = list(range(500, 540))
    labels = rng.choice(list(schema.SEVERITIES) + [""], p=[0.6, 0.2, 0.15, 0.05],
                        size=(len(studies), len(schema.LABEL_COLUMNS)))
    train = pd.DataFrame(labels, columns=list(schema.LABEL_COLUMNS))
    train.insert(0, STUDY_ID, studies)
    sub = submission_frame(studies, {})
    sub[PROBS] = rng.dirichlet([1.0, 1.0, 1.0], size=len(sub))
    sol = metric.solution_from_labels(train)
    result = metric.score(sol, sub)

    pred = sub.set_index(ROW_ID).loc[sol[ROW_ID], PROBS].to_numpy()
    y = sol[PROBS].to_numpy().argmax(axis=1)
    groups = np.array([schema.group_of_column(r.split("_", 1)[1]) for r in sol[ROW_ID]])
    for group in metric.GROUP_KEYS:
        m = groups == group
        weights = sol[metric.SAMPLE_WEIGHT][m]
        expected = sklearn_metrics.log_loss(y[m], pred[m], sample_weight=weights, labels=[0, 1, 2])
        assert result[group] == pytest.approx(expected, rel=1e-9)
    spinal_rows = groups == metric.SPINAL_GROUP
    spinal = pd.DataFrame({"study": sol[ROW_ID].str.split("_").str[0][spinal_rows],
                           "label": y[spinal_rows] == 2, "w": sol[metric.SAMPLE_WEIGHT][spinal_rows],
                           "p": pred[spinal_rows, 2]}).groupby("study").max()
    expected_any = sklearn_metrics.log_loss(spinal.label, spinal.p, sample_weight=spinal.w,
                                            labels=[False, True])
    assert result["any_severe_spinal"] == pytest.approx(expected_any, rel=1e-9)


# ---------------------------------------------------------------- refusals


def test_score_refuses_submission_missing_a_solution_row() -> None:
    train, sub = example()
    target = rid(STUDY_B, SPINAL, L5)
    with pytest.raises(DataError, match=rf"1 of the 8 solution rows are missing: {target}"):
        metric.score(train, sub[sub[ROW_ID] != target])


def test_validate_missing_required_row() -> None:
    _, sub = example()
    required = list(sub[ROW_ID])
    target = required[30]
    with pytest.raises(DataError, match=rf"1 required row\(s\) missing: {target}"):
        metric.validate_submission(sub[sub[ROW_ID] != target], required_row_ids=required)


def test_validate_extra_row_against_required() -> None:
    _, sub = example()
    required = [r for r in sub[ROW_ID] if not r.startswith(f"{STUDY_B}_")]
    with pytest.raises(DataError, match=rf"25 unexpected row\(s\): {STUDY_B}_"):
        metric.validate_submission(sub, required_row_ids=required)
    metric.validate_submission(sub, required_row_ids=list(sub[ROW_ID]))


@pytest.mark.parametrize(
    ("value", "what"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-0.1, "negative")],
)
def test_validate_refuses_bad_values(value: float, what: str) -> None:
    _, sub = example()
    target = sub[ROW_ID][17]
    sub.loc[17, MOD_COL] = value
    with pytest.raises(DataError, match=rf"{what}.*{target}"):
        metric.validate_submission(sub)


def test_validate_refuses_zero_row() -> None:
    _, sub = example()
    target = sub[ROW_ID][3]
    sub.loc[3, PROBS] = 0.0
    with pytest.raises(DataError, match=rf"sum to 0.*{target}"):
        metric.validate_submission(sub)


def test_validate_refuses_non_numeric() -> None:
    _, sub = example()
    target = sub[ROW_ID][5]
    sub[SEV_COL] = sub[SEV_COL].astype(object)
    sub.loc[5, SEV_COL] = "high"
    with pytest.raises(DataError, match=rf"'severe' is not numeric.*{target}"):
        metric.validate_submission(sub)


def test_validate_refuses_duplicate_row_id() -> None:
    _, sub = example()
    target = sub[ROW_ID][9]
    with pytest.raises(DataError, match=rf"duplicate row_id.*{target}"):
        metric.validate_submission(pd.concat([sub, sub.iloc[[9]]], ignore_index=True))


def test_validate_refuses_malformed_row_id() -> None:
    _, sub = example()
    bad = f"{STUDY_A}_{schema.CONDITION_INFO[SPINAL].slug}_l6_l7"
    sub.loc[4, ROW_ID] = bad
    with pytest.raises(DataError, match=rf"malformed row_id.*{bad}"):
        metric.validate_submission(sub)


def test_validate_refuses_bad_columns() -> None:
    _, sub = example()
    with pytest.raises(DataError, match=r"missing \['severe'\]"):
        metric.validate_submission(sub.drop(columns=[SEV_COL]))
    with pytest.raises(DataError, match=r"unexpected \['study_id'\]"):
        metric.validate_submission(sub.assign(study_id=1))
    metric.validate_submission(sub[[SEV_COL, ROW_ID, MOD_COL, NM_COL]])  # order is free


# ---------------------------------------------------------------- the script


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_script_prints_json_with_default_paths(tmp_path: Path) -> None:
    train, sub = example()
    (tmp_path / "data").mkdir()
    (tmp_path / "submission").mkdir()
    metric.solution_from_labels(train).to_csv(tmp_path / "data" / schema.TEST_SOLUTION_CSV, index=False)
    sub.to_csv(tmp_path / "submission" / "submission.csv", index=False)
    proc = run_script("--data-dir", "data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert tuple(result) == (*metric.RESULT_KEYS, "score_lo", "score_hi", "n_studies")
    assert result["score"] == pytest.approx(EXPECTED_SCORE, rel=1e-12)
    assert result["score_lo"] <= result["score"] <= result["score_hi"] and result["n_studies"] == 2


def test_script_compares_several_submissions_paired(tmp_path: Path) -> None:
    train, sub = example()
    train.to_csv(tmp_path / "train.csv", index=False)
    sub.to_csv(tmp_path / "a.csv", index=False)
    sub.assign(**{c: 1 / 3 for c in PROBS}).to_csv(tmp_path / "uniform.csv", index=False)
    proc = run_script("--solution", "train.csv", "--submission", "a.csv", "--submission", "uniform.csv",
                      "--resamples", "500", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"a.csv", "uniform.csv"}
    best = min(result, key=lambda k: result[k]["score"])
    other = next(k for k in result if k != best)
    assert result[best]["diff"] == 0.0 and result[other]["vs"] == best
    assert result[other]["diff"] == pytest.approx(result[other]["score"] - result[best]["score"])
    assert result[other]["diff_lo"] <= result[other]["diff"] <= result[other]["diff_hi"]


def test_script_bad_file_exits_2(tmp_path: Path) -> None:
    train, sub = example()
    train.to_csv(tmp_path / "train.csv", index=False)
    sub.loc[0, NM_COL] = -1.0
    sub.to_csv(tmp_path / "bad.csv", index=False)
    proc = run_script("--solution", "train.csv", "--submission", "bad.csv", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error:") and "bad.csv" in proc.stderr and sub[ROW_ID][0] in proc.stderr


def test_script_help(tmp_path: Path) -> None:
    proc = run_script("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "--solution" in proc.stdout and "--submission" in proc.stdout
