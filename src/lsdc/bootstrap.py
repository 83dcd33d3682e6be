"""How sure a score is: a paired bootstrap over studies.

Studies, not rows, are resampled: a study's 25 rows share one patient and one set of images, so rows are
not independent. Every model is scored on the same resamples (paired), so the interval of a difference
between two models reflects how differently they do on the same studies, which is much narrower than the
two single intervals suggest.

Vectorised: a resample is a vector of counts (how often each study was drawn), and the official metric is a
ratio of sums over studies (:func:`lsdc.metric.study_terms`), so ``counts @ study_sums`` scores every resample
of every model at once: thousands of resamples of thousands of studies in well under a second. Intervals are
percentile intervals of the resampled statistic. With fewer than about 30 studies they are rough.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from lsdc import metric

N_RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
COLUMNS = ("score_lo", "score_hi", "diff", "diff_lo", "diff_hi", "vs")   # what score_table adds to a score


def resample_counts(n_studies: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(n_resamples, n_studies) draw counts: each row a resample of ``n_studies`` studies with replacement."""
    if n_studies < 1 or n_resamples < 1:
        raise ValueError(f"need at least one study and one resample, got {n_studies} and {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_studies, np.full(n_studies, 1.0 / n_studies), size=n_resamples).astype(np.float64)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis (resamples); resamples that gave NaN are left out."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return lo, hi


def resampled_scores(terms: Mapping[str, metric.StudyTerms], counts: np.ndarray,
                     any_severe_scalar: float = 1.0) -> dict[str, np.ndarray]:
    """Model -> its official score on each resample (``counts`` over the models' common study order)."""
    out = {}
    for name, t in terms.items():
        values = metric.scores_from_sums(counts @ t.loss, counts @ t.weight, any_severe_scalar)
        out[name] = values[:, -1]
    return out


def score_table(solution: pd.DataFrame, predictions: Mapping[str, pd.DataFrame], *, reference: str | None = None,
                n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL) -> pd.DataFrame:
    """Each model's official score with its interval, and its paired difference to ``reference`` (default:
    the best score) with that interval, on the same resampled studies.

    Columns: ``model, score, score_lo, score_hi, diff, diff_lo, diff_hi, vs`` (``diff`` = score minus the
    reference's score: positive is worse), in the order of ``predictions``.
    """
    terms = {name: metric.study_terms(solution, sub) for name, sub in predictions.items()}
    if not terms:
        raise ValueError("no predictions to score")
    first = next(iter(terms.values()))
    for name, t in terms.items():
        if not np.array_equal(t.study_ids, first.study_ids):   # the same solution gives the same studies
            raise ValueError(f"{name} is scored on other studies than {next(iter(terms))}")
    points = {n: float(metric.scores_from_sums(t.loss.sum(0), t.weight.sum(0))[-1]) for n, t in terms.items()}
    ref = reference if reference is not None else min(points, key=lambda n: points[n])
    if ref not in terms:
        raise ValueError(f"reference {ref!r} is not among the predictions {list(terms)}")
    samples = resampled_scores(terms, resample_counts(len(first.study_ids), n_resamples, seed))
    rows = []
    for name in terms:
        lo, hi = interval(samples[name], level)
        dlo, dhi = interval(samples[name] - samples[ref], level)
        rows.append({"model": name, "score": points[name], "score_lo": float(lo), "score_hi": float(hi),
                     "diff": points[name] - points[ref], "diff_lo": float(dlo), "diff_hi": float(dhi), "vs": ref})
    return pd.DataFrame(rows)


def format_interval(value: float, lo: float, hi: float, decimals: int = 3, signed: bool = False) -> str:
    """``0.512 [0.470, 0.561]``: a value and its interval, for tables and logs."""
    sign = "+" if signed else ""
    return f"{value:{sign}.{decimals}f} [{lo:{sign}.{decimals}f}, {hi:{sign}.{decimals}f}]"
