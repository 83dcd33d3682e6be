"""The paired bootstrap over studies: exact per resample, and its intervals on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lsdc import bootstrap, metric, paper, schema
from lsdc.report import tables

SEV = list(schema.SEVERITY_COLUMNS)


def labels_all_normal(studies: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"study_id": studies, **{c: schema.SEVERITIES[0] for c in schema.LABEL_COLUMNS}})


def constant_submission(studies: list[int], probs: dict[int, tuple[float, float, float]]) -> pd.DataFrame:
    """Every row of study s predicts probs[s]."""
    rows = [{"row_id": r, **dict(zip(SEV, probs[s]))} for s in studies for r in schema.study_row_ids(s)]
    return pd.DataFrame(rows)


def random_case(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    studies = list(range(100, 100 + n))
    labels = labels_all_normal(studies)
    for col in schema.LABEL_COLUMNS:
        labels[col] = np.array(schema.SEVERITIES, dtype=object)[rng.choice(3, n, p=[0.7, 0.2, 0.1])]
        labels.loc[rng.random(n) < 0.05, col] = np.nan
    sub = pd.DataFrame({"row_id": [r for s in studies for r in schema.study_row_ids(s)]})
    sub[SEV] = rng.dirichlet([1.0, 1.0, 1.0], len(sub))
    return labels, sub


def test_study_terms_sum_to_the_official_score():
    labels, sub = random_case(30, 0)
    terms = metric.study_terms(labels, sub)
    values = metric.scores_from_sums(terms.loss.sum(0), terms.weight.sum(0))
    expected = metric.score(labels, sub)
    assert values.tolist() == pytest.approx([expected[k] for k in metric.RESULT_KEYS], rel=1e-12)
    assert terms.study_ids.tolist() == list(range(100, 130))


def test_each_resample_is_scored_exactly_like_the_duplicated_studies():
    """The vectorised score of a resample equals metric.score on a solution and submission in which each
    drawn study appears as often as it was drawn (copies renamed so they stay distinct)."""
    labels, sub = random_case(12, 1)
    counts = bootstrap.resample_counts(12, 5, seed=3)
    samples = bootstrap.resampled_scores({"m": metric.study_terms(labels, sub)}, counts)["m"]
    for b in range(5):
        lab_parts, sub_parts = [], []
        for i, study in enumerate(range(100, 112)):
            for copy in range(int(counts[b, i])):
                new = study * 100 + copy
                lab_parts.append(labels[labels.study_id == study].assign(study_id=new))
                s = sub[sub.row_id.str.startswith(f"{study}_")].copy()
                s["row_id"] = s.row_id.str.replace(f"{study}_", f"{new}_", n=1)
                sub_parts.append(s)
        expected = metric.score(pd.concat(lab_parts), pd.concat(sub_parts))["score"]
        assert samples[b] == pytest.approx(expected, rel=1e-12)


def test_counts_are_resamples_of_the_studies():
    counts = bootstrap.resample_counts(7, 1000, seed=0)
    assert counts.shape == (1000, 7) and (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    assert counts.mean(axis=0) == pytest.approx(np.ones(7), abs=0.1)
    assert np.array_equal(counts, bootstrap.resample_counts(7, 1000, seed=0))        # seeded
    assert not np.array_equal(counts, bootstrap.resample_counts(7, 1000, seed=1))


def test_interval_of_two_studies_is_hand_computed():
    """Two studies, all labels normal/mild. Model X predicts 1/3 each on study A (every group term ln 3,
    any-severe -ln(2/3)) and (1/2, 1/4, 1/4) on study B (ln 2 and -ln(3/4)); model U predicts 1/3
    everywhere. Resamples are AA (1/4), AB (1/2), BB (1/4), so with many resamples the 95% interval of X
    runs from B's score to A's, and the paired difference X - U from B's score minus A's to 0."""
    a, b = 1, 2
    labels = labels_all_normal([a, b])
    x = constant_submission([a, b], {a: (1 / 3, 1 / 3, 1 / 3), b: (0.5, 0.25, 0.25)})
    u = constant_submission([a, b], {a: (1 / 3, 1 / 3, 1 / 3), b: (1 / 3, 1 / 3, 1 / 3)})
    score_a = (3 * math.log(3) + math.log(1.5)) / 4
    score_b = (3 * math.log(2) + math.log(4 / 3)) / 4
    score_ab = (3 * (math.log(3) + math.log(2)) / 2 + (math.log(1.5) + math.log(4 / 3)) / 2) / 4
    table = bootstrap.score_table(labels, {"x": x, "u": u}, n_resamples=4000, seed=0).set_index("model")
    assert table.loc["x", "score"] == pytest.approx(score_ab, rel=1e-12)
    assert table.loc["u", "score"] == pytest.approx(score_a, rel=1e-12)
    assert (table.loc["x", "score_lo"], table.loc["x", "score_hi"]) == pytest.approx((score_b, score_a), rel=1e-12)
    assert (table.loc["u", "score_lo"], table.loc["u", "score_hi"]) == pytest.approx((score_a, score_a), rel=1e-12)
    assert table.loc["x", "vs"] == "x" and table.loc["u", "diff"] == pytest.approx(score_a - score_ab)
    assert (table.loc["u", "diff_lo"], table.loc["u", "diff_hi"]) == pytest.approx((0.0, score_a - score_b), abs=1e-12)
    assert (table.loc["x", "diff_lo"], table.loc["x", "diff_hi"]) == (0.0, 0.0)


def test_paired_interval_is_narrower_than_either_and_resolves_a_small_gap():
    """Two models that differ by a small, consistent amount on every study: the single intervals overlap
    widely, the paired difference excludes zero."""
    rng = np.random.default_rng(5)
    studies = list(range(300))
    labels = labels_all_normal(studies)
    base = rng.uniform(0.3, 0.9, len(studies))                   # how easy each study is
    good = constant_submission(studies, {s: (p, (1 - p) / 2, (1 - p) / 2) for s, p in zip(studies, base)})
    worse = constant_submission(studies, {s: (0.97 * p, (1 - 0.97 * p) / 2, (1 - 0.97 * p) / 2)
                                          for s, p in zip(studies, base)})
    t = bootstrap.score_table(labels, {"good": good, "worse": worse}, n_resamples=1000).set_index("model")
    assert t.loc["worse", "score_lo"] < t.loc["good", "score_hi"]            # single intervals overlap
    assert t.loc["worse", "diff_lo"] > 0                                      # the paired one excludes 0
    assert (t.loc["worse", "diff_hi"] - t.loc["worse", "diff_lo"]) < 0.2 * (t.loc["good", "score_hi"]
                                                                               - t.loc["good", "score_lo"])


def test_reference_and_formatting():
    labels, sub = random_case(10, 2)
    other = sub.assign(**{c: 1 / 3 for c in SEV})
    t = bootstrap.score_table(labels, {"a": sub, "b": other}, reference="b", n_resamples=200)
    assert (t.vs == "b").all() and t.set_index("model").loc["b", "diff"] == 0.0
    with pytest.raises(ValueError, match="reference 'c'"):
        bootstrap.score_table(labels, {"a": sub}, reference="c")
    assert bootstrap.format_interval(0.5, 0.4, 0.61) == "0.500 [0.400, 0.610]"
    assert bootstrap.format_interval(-0.02, -0.05, 0.011, signed=True) == "-0.020 [-0.050, +0.011]"


def test_paper_metrics_of_a_resample_are_sklearn_on_the_repeated_crops():
    """Accuracy, F1 and AUC (ties included) of each resample equal paper_scores on the crops repeated as often
    as their study was drawn; the interval columns of the report bracket the point value."""
    rng = np.random.default_rng(4)
    studies = np.arange(500, 530)
    df = pd.DataFrame({"study_id": np.repeat(studies, 3), "condition": np.tile(schema.CONDITIONS[:3], 30)})
    df["target"] = (rng.random(len(df)) < 0.3).astype(int)
    df["severe"] = np.round(np.clip(0.3 * df.target + rng.random(len(df)) * 0.7, 0, 1), 1)   # ties
    counts = bootstrap.resample_counts(len(studies), 6, seed=2)
    samples = paper.resampled_paper_scores(df, studies, counts)
    for b in range(6):
        repeated = df.loc[np.repeat(df.index.to_numpy(), counts[b, np.searchsorted(studies, df.study_id)]
                                    .astype(int))]
        expected = paper.paper_scores(repeated)
        for m in paper.INTERVAL_METRICS:
            assert samples[m][b] == pytest.approx(expected[m], rel=1e-12), (m, b)
    ci = tables.intervals({"x": df, "y": df.assign(severe=1 - df.severe)}, reference="x", n_resamples=500)
    point = paper.paper_scores(df)
    for m in paper.INTERVAL_METRICS:
        assert ci["x"][f"{m}_lo"] <= point[m] <= ci["x"][f"{m}_hi"]
        assert ci["x"][f"d_{m}"] == 0.0 and ci["x"][f"d_{m}_lo"] == ci["x"][f"d_{m}_hi"] == 0.0
    assert ci["y"]["d_auc"] == pytest.approx(paper.paper_scores(df.assign(severe=1 - df.severe))["auc"] - point["auc"])
    assert ci["y"]["d_auc_hi"] < 0                      # inverted scores: clearly worse on every resample
