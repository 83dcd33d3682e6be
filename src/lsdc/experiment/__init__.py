"""The experiment folder's format, shared by training, inference, the ensemble and the report.

An experiment folder (``outputs/<experiment>/``) holds::

    config.yaml              the ExperimentConfig that made it
    fold<k>/best.pt          weights + config + this fold's normalisation statistics
    fold<k>/last.pt          resume state of an unfinished fold (removed when it finishes)
    fold<k>/epochs.csv       per-epoch losses and scores (validation studies, held-out fold); fold<k>/metrics.json
    fold<k>/val_preds.csv    the held-out fold's predictions by the checkpoint the validation studies chose
    oof.csv | oof_paper.csv  out-of-fold predictions (competition task: submission format)
    metrics.json             the run's summary; prior.json: the training prior per group
    oof_localized.csv        OOF from crops at held-out localiser points (lsdc.localized_oof)
    oof_fold_selected.csv    the OOF had each held-out fold chosen its own checkpoint (optimistic; for comparison)

``files`` names them, ``config`` is the ExperimentConfig, ``contract`` the model output contract (one network for
all five conditions outputs ``5 x K`` logits and the crop's condition picks its ``K``: K = 3 severities, or 2
for the paper's binary task), ``device`` where it runs, ``checkpoints`` the trained fold models and ``prior`` the
training prior.
"""

from lsdc.experiment.checkpoints import (
    ExperimentModels,
    FoldModel,
    load_checkpoint,
    load_experiment_models,
    save_checkpoint,
)
from lsdc.experiment.config import ExperimentConfig, FoldConfig, LogConfig, fold_dir, load_experiment_config
from lsdc.experiment.contract import COND_INDEX, N_CONDITIONS, select_logits, standardise, to_input
from lsdc.experiment.device import autocast, resolve_device
from lsdc.experiment.files import (
    BEST_PT,
    CONFIG_YAML,
    EPOCHS_CSV,
    FOLD_SELECTED_OOF_CSV,
    FOLD_SELECTED_PREDS_CSV,
    LAST_PT,
    LOCALIZED_OOF_CSV,
    METRICS_JSON,
    OOF_CSV,
    PAPER_OOF_CSV,
    PRIOR_JSON,
    VAL_PREDS_CSV,
)
from lsdc.experiment.prior import (
    PROB_FLOOR,
    fill_out_of_fold,
    fill_with_prior,
    load_prior,
    prior_probabilities,
    save_prior,
)

# The training recipe lives beside the training loop; re-exported here, where ExperimentConfig holds it.
from lsdc.train.config import PAPER_RECIPE, TrainConfig

__all__ = [
    "BEST_PT", "COND_INDEX", "CONFIG_YAML", "EPOCHS_CSV", "ExperimentConfig", "ExperimentModels",
    "FOLD_SELECTED_OOF_CSV", "FOLD_SELECTED_PREDS_CSV", "FoldConfig", "FoldModel", "LAST_PT",
    "LOCALIZED_OOF_CSV", "LogConfig", "METRICS_JSON", "N_CONDITIONS", "OOF_CSV", "PAPER_OOF_CSV",
    "PAPER_RECIPE", "PRIOR_JSON", "PROB_FLOOR", "TrainConfig", "VAL_PREDS_CSV", "autocast", "fill_out_of_fold",
    "fill_with_prior", "fold_dir", "load_checkpoint", "load_experiment_config", "load_experiment_models",
    "load_prior", "prior_probabilities", "resolve_device", "save_checkpoint", "save_prior", "select_logits",
    "standardise", "to_input",
]
