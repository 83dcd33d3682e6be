"""What to ship: the ensemble chosen by its score on rows it was not fitted on.

A fit scored on its own rows can never lose to its members (every single model is among its candidates), so
that score cannot choose between a blend and a single model. Here every candidate is judged out of fold:

1. every single model as it is (its plain OOF score: nothing was fitted on those rows), and with fitted
   temperatures, judged nested (each fold tempered by what was fitted on the other folds); the best starts;
2. forward selection: the model whose addition to the current set gives the best nested blend is added,
   as long as the nested score improves.

A fitted candidate is taken only when it beats the current choice by more than ``MIN_GAIN``. The last one
taken is fitted once more on all rows and shipped; its nested score is the score reported. Its weights never
saw the rows that score it, but the choice among the candidates was made on those same scores, so where
candidates are close the winner's score can flatter it a little (judging the whole choice out of fold would
need the selection nested once more, inside each fold). A model that does not help out of fold (pure noise,
a copy of another) is never added, so it gets no weight. Without folds nothing can be judged out of fold, and
the best single model is shipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from lsdc import metric, schema
from lsdc.ensemble.blend import apply_ensemble
from lsdc.ensemble.fit import FIT_OBJECTIVE, SCORE, fit_blend, nested_predictions
from lsdc.ensemble.frames import ROW_ID, align_oofs, model_frame, row_folds, solution_for
from lsdc.ensemble.spec import UNKNOWN_KIND, EnsembleSpec, single_spec

log = logging.getLogger(__name__)

# A fitted candidate must beat the current choice out of fold by more than this: the choice among candidates
# is made on the same nested scores that are reported, so a smaller gain could be the luck of the choice.
MIN_GAIN = 1e-3


@dataclass
class EnsembleFit:
    """The shipped spec and its predictions on the OOF rows, each from a fit that did not see the row."""

    spec: EnsembleSpec
    oof: pd.DataFrame           # nested (or plain, for a raw single model) OOF of the shipped spec
    fitted: bool                # whether anything was fitted (False: one model as it is)


@dataclass
class _Candidate:
    models: list[str]
    fitted: bool
    oof: pd.DataFrame
    score: dict[str, float]

    def record(self, accepted: bool) -> dict:
        return {"models": list(self.models), "fitted": self.fitted, "nested_score": self.score[SCORE],
                "accepted": accepted}


def _describe(c: _Candidate) -> str:
    if len(c.models) > 1:
        return f"blend of {', '.join(c.models)}"
    return f"{c.models[0]} with fitted temperatures" if c.fitted else f"{c.models[0]} alone"


def select_out_of_fold(aligned: Mapping[str, pd.DataFrame], judged: pd.DataFrame, folds: Mapping[int, int],
                       temperature: bool, min_weight: float) -> tuple[_Candidate, _Candidate, list[dict]]:
    """The candidate to ship (see the module doc), the best single model as it is, and every candidate
    tried with its score on ``judged`` (the labeled rows whose study has a fold)."""
    names = list(aligned)

    def judge(models: list[str]) -> _Candidate:
        """A fitted candidate, judged on rows its fits did not see."""
        oof = nested_predictions({m: aligned[m] for m in models}, judged, folds, temperature, min_weight)
        return _Candidate(models, True, oof, metric.score(judged, oof))

    raw = {m: _Candidate([m], False, model_frame(aligned[m]), metric.score(judged, model_frame(aligned[m])))
           for m in names}
    baseline = min(raw.values(), key=lambda c: c.score[SCORE])
    tempered = [judge([m]) for m in names] if temperature else []
    current = baseline
    if tempered:
        top = min(tempered, key=lambda c: c.score[SCORE])
        current = top if top.score[SCORE] < baseline.score[SCORE] - MIN_GAIN else baseline
    steps = [c.record(c is current) for c in (*raw.values(), *tempered)]
    while True:
        trials = [judge([*current.models, m]) for m in names if m not in current.models]
        if not trials:
            break
        top = min(trials, key=lambda c: c.score[SCORE])
        accepted = top.score[SCORE] < current.score[SCORE] - MIN_GAIN
        steps += [c.record(accepted and c is top) for c in trials]
        log.info("out of fold: %s %.5f (best of %d tried) against %s %.5f: %s", _describe(top),
                 top.score[SCORE], len(trials), _describe(current), current.score[SCORE],
                 "taken" if accepted else "kept the latter")
        if not accepted:
            break
        current = top
    return current, baseline, steps


def fit_ensemble(
    oofs: Mapping[str, pd.DataFrame],
    labels: pd.DataFrame,
    *,
    temperature: bool = True,
    min_weight: float = 1e-3,
    kinds: Mapping[str, str] | None = None,
    experiments: Mapping[str, str] | None = None,
    folds: Mapping[int, int] | None = None,
) -> EnsembleFit:
    """Choose and fit the ensemble of the experiments' OOF predictions (see the module doc).

    ``oofs``: experiment name -> OOF frame (submission format; aligned on their shared rows here).
    ``labels``: train.csv-shaped frame or scoring-format solution. ``folds``: study_id -> fold of the CV
    the OOF came from; without it only single models can be judged and the best one is shipped.
    """
    aligned = align_oofs(oofs)
    names = list(aligned)
    first = next(iter(aligned.values()))
    solution = solution_for(labels, first[ROW_ID].tolist())
    singles = {m: metric.score(solution, model_frame(aligned[m])) for m in names}
    best = min(names, key=lambda m: singles[m][SCORE])
    current = baseline = _Candidate([best], False, model_frame(aligned[best]), singles[best])
    steps = [current.record(True)]
    something_to_fit = temperature or len(names) > 1
    if folds and something_to_fit:
        judged = solution[row_folds(solution[ROW_ID].astype(str), folds) >= 0].reset_index(drop=True)
        if len(judged) < len(solution):
            log.warning("%d labeled OOF rows have no fold: the nested scores leave them out",
                        len(solution) - len(judged))
        current, baseline, steps = select_out_of_fold(aligned, judged, folds, temperature, min_weight)
    elif something_to_fit:
        log.warning("no CV folds for the OOF rows: a fit cannot be judged out of fold, so the best single model "
                    "(%s) is shipped as it is", best)

    chosen = {m: aligned[m] for m in current.models}
    fitted = fit_blend(chosen, solution, temperature, min_weight) if current.fitted else None
    spec = fitted.spec(current.models) if fitted else single_spec(current.models[0])
    if current is not baseline:
        why = (f"out of fold {current.score[SCORE]:.5f} beats the best single model as it is, {best} "
               f"({baseline.score[SCORE]:.5f})")
    elif something_to_fit:
        why = "no fitted blend or temperature beat it out of fold" if folds else "no folds to judge a fit out of fold"
    else:
        why = "the only model, nothing to fit"
    spec.shipped = f"{_describe(current)}: {why}"
    spec.fitted = current.fitted
    spec.experiments = {m: (experiments or {}).get(m, m) for m in names}
    spec.kinds = {m: (kinds or {}).get(m, UNKNOWN_KIND) for m in names}
    spec.oof_scores = singles
    spec.nested_score = current.score
    spec.in_sample_score = metric.score(solution, apply_ensemble(spec, chosen))
    spec.selection = steps
    spec.fit = {"objective": FIT_OBJECTIVE, "temperature_fitted": temperature, "min_weight": min_weight,
                "group_loss": fitted.group_loss if fitted else {}, "best_single": best, "n_rows": len(first),
                "n_scored_rows": len(solution),
                "n_studies": len({schema.parse_row_id(r)[0] for r in first[ROW_ID]})}
    log.info("chosen to ship: %s", spec.shipped)
    log.info("ensemble OOF score %.5f out of fold (%.5f on the rows it was fitted on); best single model %s %.5f",
             current.score[SCORE], spec.in_sample_score[SCORE], best, singles[best][SCORE])
    return EnsembleFit(spec, current.oof, current.fitted)
