# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
# Parameters: the only cell to edit.
DATA_DIR = "/kaggle/input/rsna-2024-lumbar-spine-degenerative-classification"   # the competition data
WEIGHTS_DIR = ""            # the pack from scripts/pack_kaggle.py; "": the attached dataset holding its manifest.json
OUT_DIR = "/kaggle/working"  # submission.csv, predict_report.csv and the log are written here
SETTINGS: list[str] = []    # prediction settings as 05_predict.py's --set, e.g. ["tta=[vflip,lrflip]", "batch_size=32"]

# %% [markdown]
# # RSNA 2024 Lumbar Spine: offline inference with the `lsdc` pack
#
# Predicts every test study (localise the 25 levels, crop, classify with every model and fold, blend with the
# ensemble's weights) and writes `submission.csv`: the same code and the same bytes as
# `scripts/05_predict.py --weights-dir <pack>`.
#
# **On Kaggle**: *Add Input* the competition and the weights dataset (a folder made on your training box with
# `python scripts/pack_kaggle.py --out kaggle_dataset` and uploaded as a dataset, e.g. `lsdc-weights`; the
# notebook `kaggle_train.ipynb` makes one too). Internet off, GPU on (CPU works, slowly). Nothing is installed
# and nothing is downloaded: the code comes from the pack (`<pack>/code/src`), the libraries are Kaggle's own.
#
# **Tested with** Python 3.11, torch 2.14.1, timm 1.0.31, pydicom 3.0.2, opencv 5.0.0 (opencv-python-headless
# 5.0.0.93), numpy 2.4.6, pandas 3.1.1, scipy 1.17.1, scikit-learn 1.9.1, PyYAML 6.0.3 (CPU, in CI, executed
# headless against a synthetic stand-in of the competition data). `dicomsdl` is optional: without it DICOM
# headers are read with pydicom. The cell below prints the versions this notebook runs with.

# %%
import sys
from pathlib import Path


def find_pack(root: Path = Path("/kaggle/input")) -> Path:
    """The attached dataset holding a pack's manifest.json (up to three folders deep)."""
    found = sorted({p.parent for depth in range(1, 4) for p in root.glob("*/" * depth + "manifest.json")
                    if (p.parent / "code" / "src" / "lsdc").is_dir()})
    if len(found) != 1:
        raise FileNotFoundError(f"{'no' if not found else 'several'} lsdc pack(s) under {root} "
                                f"({', '.join(map(str, found))}): attach one, or set WEIGHTS_DIR")
    return found[0]


weights = Path(WEIGHTS_DIR) if WEIGHTS_DIR else find_pack()
code = weights / "code" / "src"
if not (code / "lsdc").is_dir():
    raise FileNotFoundError(f"{code} holds no lsdc package: pack with scripts/pack_kaggle.py (without --no-code)")
sys.path.insert(0, str(code))

import cv2
import pydicom
import timm
import torch

import lsdc

print(f"pack: {weights}")
print(f"lsdc from {Path(lsdc.__file__).parent}")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, timm {timm.__version__}, "
      f"pydicom {pydicom.__version__}, opencv {cv2.__version__}")
print("device:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "CPU")

# %%
from lsdc import cli
from lsdc import config as config_mod
from lsdc.inference import PredictConfig, predict_submission

out = Path(OUT_DIR)
cli.setup_logging(out / "logs" / "kaggle_inference.log")
cfg = config_mod.load(PredictConfig, None, SETTINGS)
submission = predict_submission(DATA_DIR, weights, out / "submission.csv", cfg)

# %%
import pandas as pd

report = pd.read_csv(out / "predict_report.csv", keep_default_na=False)
if "source" in report.columns:   # one line per row: the models and folds that made it, or the prior and why
    print(report.groupby(["source", "reason"]).size().rename("rows").to_string())
    failed = [s for s, rows in report.groupby("study_id") if (rows.source == "prior").all()]
    n_studies = report.study_id.nunique()
else:   # a pack made before per-row provenance writes one line per study
    failed = report[(report.error != "") | (report.cells_localised == 0)].study_id.tolist()
    n_studies = len(report)
print(f"{out / 'submission.csv'}: {len(submission)} rows, {n_studies} studies; "
      f"{len(failed)} without any model prediction (training prior)")
submission.head(10)
