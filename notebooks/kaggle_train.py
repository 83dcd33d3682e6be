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
CODE_DIR = ""       # the repository (src/, scripts/, configs/); "": the attached dataset holding it (a pack's code/)
PREVIOUS_DIR = ""   # a previous session's output of this notebook; "": the attached one, if any; "none": start afresh
OUT_DIR = "/kaggle/working"       # outputs/ (every step's results), the log and the pack are written here
CONFIG = "configs/pipeline.yaml"  # the pipeline's config, relative to CODE_DIR (or absolute)
SETTINGS: list[str] = []          # overrides of it (run_pipeline.py's --set); two T4s: ["devices=[cuda:0,cuda:1]"]
TIME_LIMIT_HOURS = 11.0           # stop the pipeline after this long (a Kaggle session ends at 12 h); the next resumes
PACK = True                       # pack the weights at the end (OUT_DIR/kaggle_dataset) when every step has finished
HALF = True                       # fold checkpoints in float16 in the pack (about half the upload)

# %% [markdown]
# # RSNA 2024 Lumbar Spine: training the `lsdc` pipeline on Kaggle, across sessions
#
# Runs `scripts/run_pipeline.py` on the competition data: crops, folds, the localiser, every configured model
# over the folds, the ensemble, the test predictions and the pictures of the run (training curves per
# experiment, the OOF chart); then packs the weights for `kaggle_inference.ipynb` with `scripts/pack_kaggle.py`.
#
# **Across sessions** (at most 12 hours each, a weekly GPU quota): every step of the pipeline resumes (crops,
# localiser folds, model folds epoch by epoch, ensemble fits, predictions), so a session that stops early loses
# at most the epoch in progress. The pipeline is stopped after `TIME_LIMIT_HOURS`, so the session ends cleanly
# and its output is saved. For the next session, *Add Input* this notebook's output (the previous version) and
# run again: its `outputs/` is copied into `/kaggle/working/outputs` first (files already there are kept), and
# finished work is skipped.
#
# **Two GPUs** (Kaggle's T4 x2): `SETTINGS = ["devices=[cuda:0,cuda:1]"]` trains each experiment's folds on both
# at once, one process per GPU; otherwise one GPU trains everything.
#
# **Inputs**: the competition data, and the code: a dataset holding the repository (`src/`, `scripts/`,
# `configs/`), e.g. a pack made with `scripts/pack_kaggle.py` (its `code/` folder). Internet off; nothing is
# installed (Kaggle's torch, timm, pydicom, opencv, albumentations, scikit-learn are used). Tested headless in CI
# with the versions listed in `kaggle_inference.ipynb`, on CPU and a synthetic stand-in of the data.

# %%
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

INPUT = Path("/kaggle/input")


def previous_outputs(root: Path) -> list[Path]:
    """Attached datasets that are an earlier output of this notebook (they hold outputs/ with a folds file)."""
    return sorted({p.parent.parent for depth in range(0, 3) for p in root.glob("*/" * depth + "*/outputs/folds_*.csv")})


def find_code(root: Path) -> Path:
    """The attached repository: a folder holding src/lsdc, scripts/ and configs/ (not inside a previous output)."""
    skip = previous_outputs(root)
    found = sorted({p.parent.parent for depth in range(0, 3) for p in root.glob("*/" * depth + "*/src/lsdc")
                    if (p.parent.parent / "scripts").is_dir() and not any(p.is_relative_to(s) for s in skip)})
    if len(found) != 1:
        raise FileNotFoundError(f"{'no' if not found else 'several'} copies of the lsdc repository under {root} "
                                f"({', '.join(map(str, found))}): attach one, or set CODE_DIR")
    return found[0]


code = Path(CODE_DIR) if CODE_DIR else find_code(INPUT)
data = Path(DATA_DIR)
out = Path(OUT_DIR)
outputs = out / "outputs"
if not (data / "train.csv").is_file():
    raise FileNotFoundError(f"{data} holds no train.csv: attach the competition data or set DATA_DIR")
if PREVIOUS_DIR.lower() == "none":
    previous = None
elif PREVIOUS_DIR:
    previous = Path(PREVIOUS_DIR)
else:
    found = [p for p in previous_outputs(INPUT) if p.resolve() != out.resolve()]
    if len(found) > 1:
        raise FileNotFoundError(f"several previous outputs attached ({', '.join(map(str, found))}): set PREVIOUS_DIR")
    previous = found[0] if found else None
print(f"code: {code}\ndata: {data}\noutputs: {outputs}\nprevious session: {previous or 'none'}")

# %% [markdown]
# ## Resume from the previous session's output
# Copied with their modification times (the pipeline's records of what each output was made from use them
# for large files); a file already in `outputs/` (from this session) is kept.

# %%
def copy_missing(src: Path, dest: Path) -> tuple[int, int]:
    """Copy the files under ``src`` that ``dest`` lacks; (files copied, bytes)."""
    n = size = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dest / f.relative_to(src)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            n, size = n + 1, size + f.stat().st_size
    return n, size


outputs.mkdir(parents=True, exist_ok=True)
if previous is not None:
    if not (previous / "outputs").is_dir():
        raise FileNotFoundError(f"{previous} holds no outputs/ folder")
    n, size = copy_missing(previous / "outputs", outputs)
    print(f"copied {n} files ({size / 2**20:.1f} MiB) from {previous / 'outputs'}")

# %% [markdown]
# ## The pipeline
# Runs as its own process (the log streams below and is kept in `outputs/logs/run_pipeline.log`); stopped
# with an interrupt, as Ctrl-C would, when the time limit comes.

# %%
PROGRESS_EVERY_S = 60   # progress bars are shown at most this often


INTERRUPTED = 130      # run_pipeline.py's exit code after an interrupt (its work so far is kept)


def run(cmd: list[str], limit_s: float | None = None) -> int:
    """Run ``cmd`` in the repository with its src/ on the path, streaming its output; interrupt it after
    ``limit_s`` seconds. Returns the exit code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code / "src"), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)

    def pump() -> None:
        last = 0.0
        for line in proc.stdout:
            is_bar = "%|" in line
            if not is_bar or time.monotonic() - last > PROGRESS_EVERY_S:
                print(line, end="", flush=True)
                last = time.monotonic() if is_bar else last

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        print(f"time limit of {limit_s / 3600:.2f} h reached: interrupting the pipeline (the next session resumes)")
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    reader.join(timeout=30)
    return rc


config = Path(CONFIG) if Path(CONFIG).is_absolute() else code / CONFIG
submission = outputs / "submission.csv"   # inside outputs/, so the next session keeps it too
cmd = [sys.executable, "scripts/run_pipeline.py", "--config", str(config), "--data-dir", str(data),
       "--output-dir", str(outputs), "--set", f"submission={submission}"]
for setting in SETTINGS:
    cmd += ["--set", setting]
started = time.monotonic()
status = run(cmd, TIME_LIMIT_HOURS * 3600)
minutes = (time.monotonic() - started) / 60
if status not in (0, INTERRUPTED):
    raise RuntimeError(f"the pipeline failed (exit code {status}) after {minutes:.1f} min: see the log above")
finished = status == 0
print(f"pipeline {'finished' if finished else 'interrupted'} after {minutes:.1f} min")

# %% [markdown]
# ## The pack for `kaggle_inference.ipynb`
# Upload `kaggle_dataset/` as a dataset (or attach this notebook's output to the inference notebook and point its
# `WEIGHTS_DIR` at `kaggle_dataset`).

# %%
pack_dir = out / "kaggle_dataset"
if finished and PACK:
    status = run([sys.executable, "scripts/pack_kaggle.py", "--output-dir", str(outputs), "--out", str(pack_dir),
                  "--half" if HALF else "--no-half"])
    if status != 0:
        raise RuntimeError(f"packing failed (exit code {status})")
elif not finished:
    print("not packed: the pipeline has not finished. Save this version, attach its output and run again "
          "(PREVIOUS_DIR).")

# %% [markdown]
# ## Pictures of the run

# %%
from IPython.display import Image, display

for png in [*sorted(outputs.glob("*/curves.png")), outputs / "oof_chart.png"]:
    if png.is_file():
        print(png.relative_to(out))
        display(Image(filename=str(png)))
