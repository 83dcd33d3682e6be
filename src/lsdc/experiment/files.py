"""The names of an experiment folder's files (the package docstring says what each holds)."""

CONFIG_YAML = "config.yaml"
METRICS_JSON = "metrics.json"
PRIOR_JSON = "prior.json"
OOF_CSV = "oof.csv"
PAPER_OOF_CSV = "oof_paper.csv"
LOCALIZED_OOF_CSV = "oof_localized.csv"
BEST_PT = "best.pt"
LAST_PT = "last.pt"
EPOCHS_CSV = "epochs.csv"
VAL_PREDS_CSV = "val_preds.csv"
# The held-out fold's predictions at the epoch its own loss was lowest, and the OOF they make: what the OOF
# would be if the held-out fold chose the checkpoint (val_share=0), from the same run, to show the optimism.
FOLD_SELECTED_PREDS_CSV = "val_preds_fold_selected.csv"
FOLD_SELECTED_OOF_CSV = "oof_fold_selected.csv"
