"""Compare experiments on their out-of-fold predictions, choose what to ship out of fold, and blend.

- :mod:`~lsdc.ensemble.frames`: OOF frames lined up by row id;
- :mod:`~lsdc.ensemble.blend`: the combination rule (per-group weights and temperatures) and fold averaging;
- :mod:`~lsdc.ensemble.fit`: fitting weights and temperatures, and nested (out-of-fold) predictions of a fit;
- :mod:`~lsdc.ensemble.select`: the shipped ensemble, chosen by out-of-fold scores;
- :mod:`~lsdc.ensemble.table`: the comparison table with intervals;
- :mod:`~lsdc.ensemble.spec`: ``ensemble.json``;
- :mod:`~lsdc.ensemble.step`: scripts/04_ensemble.py's step.
"""

from lsdc.ensemble.blend import FOLD_AVERAGES, apply_ensemble, average_folds, blend_folds
from lsdc.ensemble.fit import fit_blend, nested_predictions
from lsdc.ensemble.frames import align_oofs, read_oof
from lsdc.ensemble.select import EnsembleFit, fit_ensemble
from lsdc.ensemble.spec import (
    SPEC_JSON,
    EnsembleSpec,
    equal_spec,
    load_ensemble,
    save_ensemble,
    single_spec,
)
from lsdc.ensemble.step import (
    TABLE_CSV,
    TABLE_MD,
    EnsembleConfig,
    build_ensemble,
    discover_experiments,
    ensemble_oof_name,
    experiment_kind,
    table_names,
)
from lsdc.ensemble.table import (
    CHOSEN,
    ENSEMBLE,
    NESTED,
    TERMS,
    comparison_table,
    summary_markdown,
    table_markdown,
)

__all__ = [
    "CHOSEN", "ENSEMBLE", "FOLD_AVERAGES", "NESTED", "SPEC_JSON", "TABLE_CSV", "TABLE_MD", "TERMS",
    "EnsembleConfig", "EnsembleFit", "EnsembleSpec", "align_oofs", "apply_ensemble", "average_folds",
    "blend_folds", "build_ensemble", "comparison_table", "discover_experiments", "ensemble_oof_name",
    "equal_spec", "experiment_kind", "fit_blend", "fit_ensemble", "load_ensemble", "nested_predictions",
    "read_oof", "save_ensemble", "single_spec", "summary_markdown", "table_markdown", "table_names",
]
