"""Smoke runs of every benchmark (benchmarks/), so that a change that breaks one fails here: each script runs
as a user runs it (a subprocess of this interpreter), at toy sizes, and must exit 0 and print and write its
figures. No figure is judged and no time is asserted: the sizes are far too small to mean anything.

- bench_crops.py and bench_synthetic.py: their own smallest runs;
- bench_train_step.py, bench_data.py, bench_folds.py and bench_scaling.py (with untrained.py): through
  ``bash benchmarks/gpu_check.sh smoke``, the GPU check's five steps with their GPU options followed by
  options that put them on the CPU at toy sizes (the CPU paths and the GPU check's own command lines);
- bench_quality.py: the whole pipeline with tests/data/bench_quality_tiny.yaml on the session's small
  synthetic set, its report written to a temporary file.

Every --write goes to a temporary RESULTS.md (``LSDC_BENCH_RESULTS``, read by benchmarks/common.py) or
``--out``; a fixture checks that benchmarks/RESULTS.md and QUALITY.md are left as they were. Also here:
``lsdc.experiment.to_input`` on any array layout (bench_data's reference loader hands it flipped views).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lsdc.experiment import to_input

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TIMEOUT = 900   # seconds per run: far above what a toy run takes on a loaded 2-core machine; a hang fails
NUM = r"\d+(?:\.\d+)?"
ROW_DATE = r"\| \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC \|"


# ----------------------------------------------------------------------------- to_input, any layout


MEAN = np.array([0.3, 0.4, 0.5], np.float32)
STD = np.array([0.2, 0.25, 0.3], np.float32)


def _expected(crops: np.ndarray) -> np.ndarray:
    x = np.array(crops, dtype=np.float32).transpose(0, 3, 1, 2)
    return (x / 255.0 - MEAN[:, None, None]) / STD[:, None, None]


def _crops(n: int = 3, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("view", ["flip_rows", "flip_cols", "flip_batch", "strided", "channels_reversed",
                                  "transposed"])
def test_to_input_accepts_any_layout(view):
    base = _crops()
    crops = {"flip_rows": base[:, ::-1], "flip_cols": base[:, :, ::-1], "flip_batch": base[::-1],
             "strided": base[:, ::2, 1::2], "channels_reversed": base[..., ::-1],
             "transposed": base.transpose(0, 2, 1, 3)}[view]
    assert not crops.flags.c_contiguous
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = to_input(crops, MEAN, STD)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert tuple(x.shape) == (crops.shape[0], 3, crops.shape[1], crops.shape[2])
    np.testing.assert_allclose(x.numpy(), _expected(crops), rtol=1e-6, atol=1e-6)
    assert torch.equal(x, to_input(np.ascontiguousarray(crops), MEAN, STD))


def test_to_input_on_the_flipped_crop_bench_data_hands_it():
    """bench_data's reference loader: one crop, flipped vertically, with a batch axis added."""
    img = _crops(1, 16)[0]
    x = to_input(img[::-1][None], MEAN, STD)
    np.testing.assert_allclose(x.numpy(), _expected(img[::-1][None]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_to_input_on_a_read_only_memory_map_warns_nothing_and_changes_nothing(tmp_path, dtype):
    path = tmp_path / "crops.npy"
    np.save(path, _crops().astype(dtype))
    array = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # torch.from_numpy warns on read-only memory
        x = to_input(array[[2, 0]][:, ::-1], MEAN, STD)
        y = to_input(array[1:], MEAN, STD)
    np.testing.assert_allclose(x.numpy(), _expected(array[[2, 0]][:, ::-1]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), _expected(array[1:]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.load(path), _crops().astype(dtype))


# ----------------------------------------------------------------------------- running the benchmarks


@pytest.fixture(autouse=True)
def _records_untouched():
    """No smoke run may write into the project's records."""
    paths = [BENCH / "RESULTS.md", BENCH / "QUALITY.md", BENCH / "QUALITY_224.md"]
    before = {p: p.read_bytes() if p.is_file() else None for p in paths}
    yield
    for p in paths:
        assert (p.read_bytes() if p.is_file() else None) == before[p], f"a benchmark smoke run changed {p}"


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(BENCH), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["TMPDIR"] = str(tmp_path)                                # the benchmarks' temporary folders
    env["LSDC_BENCH_RESULTS"] = str(tmp_path / "RESULTS.md")     # where --write records runs
    env["PYTHON"] = sys.executable                               # gpu_check.sh's interpreter
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("OUT", None)
    return env


def _run(cmd: list[str], tmp_path: Path, cwd: Path | None = None, **env: str) -> str:
    """Run ``cmd`` to its end (its whole process group killed after TIMEOUT s); its output; fails on exit != 0."""
    proc = subprocess.Popen(cmd, cwd=cwd or tmp_path, env=_env(tmp_path) | env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} still ran after {TIMEOUT} s:\n{out[-6000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def _bench(script: str, tmp_path: Path, *args: str, cwd: Path | None = None) -> str:
    return _run([sys.executable, str(BENCH / script), *args], tmp_path, cwd)


def _section(results: Path, name: str) -> str:
    text = results.read_text()
    m = re.search(rf"<!-- BEGIN {name} -->\n(.*?)<!-- END {name} -->", text, flags=re.S)
    assert m, f"no section {name!r} in {results}:\n{text[-3000:]}"
    return m.group(1)


def _history_row(section: str, cells: str) -> None:
    """The section's "All runs" table ends with this run's row: its date, then ``cells`` (a regex)."""
    rows = [line for line in section.splitlines() if re.match(ROW_DATE, line)]
    assert rows and re.search(cells, rows[-1]), f"no run row matching {cells!r} in:\n{section}"


def test_bench_crops_smoke(tmp_path):
    out = _bench("bench_crops.py", tmp_path, "--studies", "1", "--rounds", "1", "--size", "32", "--write")
    assert re.search(r"1 studies, \d+ crops of 32 px x 3 slices; slices decoded: project \d+", out)
    assert re.search(rf"stages \(ms/study\): project headers {NUM}", out)
    assert re.search(rf"headers: read_header {NUM} ms/file", out)
    assert re.search(rf"speed-up: {NUM}x \(median of 1 interleaved rounds", out)
    assert "crops identical: True" in out
    section = _section(tmp_path / "RESULTS.md", "crops")
    assert "## Crop preparation" in section
    _history_row(section, rf"\| 1 \| 1 \| {NUM} \| {NUM} \| {NUM}x \| (yes|NO) \|$")
    assert not list(tmp_path.glob("bench_crops_*")), "the temporary data was not removed"


def test_bench_synthetic_smoke(tmp_path):
    data = tmp_path / "data"
    out = _bench("bench_synthetic.py", tmp_path, "--studies", "1", "--workers", "1", "--extrapolate",
                 "--out", str(data), "--write")
    assert re.search(rf"1 studies in {NUM} s: {NUM} studies/s, \d+ MiB written", out)
    assert re.search(rf"200 studies: {NUM} s \(extrapolated\)", out)
    assert (data / "train.csv").is_file() and len(list((data / "train_images").iterdir())) == 1
    _history_row(_section(tmp_path / "RESULTS.md", "synthetic"), rf"\| 1 \| 1 \| {NUM} \| {NUM} \| {NUM} "
                 r"\(extrapolated\) \| (yes|NO) \|$")


def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path):
    """bench_train_step (with and without torch.compile), bench_data (with the fed step), bench_folds and
    bench_scaling (untrained weights), as gpu_check.sh runs them, at toy sizes on the CPU."""
    out_dir = tmp_path / "out"
    _run(["bash", str(BENCH / "gpu_check.sh"), "smoke"], tmp_path, OUT=str(out_dir))   # exit 1 if a step failed
    log = (out_dir / "gpu_check.log").read_text()
    steps = re.findall(r"^== \d\d:\d\d:\d\d (benchmarks/\S+)", log, flags=re.M)
    codes = re.findall(r"^== rc (\d+)", log, flags=re.M)
    assert steps == ["benchmarks/bench_train_step.py"] * 2 + ["benchmarks/bench_data.py", "benchmarks/bench_folds.py",
                                                              "benchmarks/bench_scaling.py"], log[-6000:]
    assert codes == ["0"] * 5, f"a step failed (exit codes {codes}):\n{log[-8000:]}"

    # 1. the training step of the three models, and its section
    assert re.search(rf"attention/densenet201 step time: {NUM} \(median of 1 per-round ratios", log)
    for model in ("attention", "densenet201", "resnet101"):
        assert re.search(rf"^\| {model} \| {NUM} \| {NUM} \| \d+ \| {NUM} \| {NUM} \| - \|$", log, flags=re.M), model
    _history_row(_section(out_dir / "RESULTS.md", "train_step_cpu"), rf"\| cpu \| 2 \| 32 \| fp32 \| {NUM} \| {NUM} "
                 rf"\| {NUM} \| {NUM} \| (yes|NO) \|$")
    # 2. torch.compile (eager backend) with the peak memory probe in a child process; no --write
    assert "fp32, torch.compile (eager)" in log
    assert re.search(r"memory attention: peak \d+ MiB, delta -?\d+ MiB", log)
    assert "train_step_cpu_compile" not in (out_dir / "RESULTS.md").read_text()
    # 3. the data path, with the fed step on the CPU
    assert re.search(rf"PNG loader \d+ img/s; host side of a GPU run \d+ img/s \({NUM}x\); whole CPU path \d+ img/s",
                     log)
    assert re.search(rf"step on device tensors \d+ img/s, fed by the data path \d+ img/s: {NUM}x the time", log)
    _history_row(_section(out_dir / "RESULTS.md", "data"), rf"\| \d+ \| 32 \| 1 \| \d+ \| \d+ \| \d+ \| {NUM}x ")
    _history_row(_section(out_dir / "RESULTS.md", "data_fed_cpu"), rf"\| cpu \| 4 \| 32 \| \d+ \| \d+ \| {NUM} \|")
    # 4. K-fold training of the tiny config (the second fold may or may not fit the deadline)
    assert re.search(rf"fold 0: {NUM} s, 1 epochs, \d+ training crops", log)
    _history_row(_section(out_dir / "RESULTS.md", "folds_cpu"), r"`tests/data/bench_tiny.yaml` \| 4 \| 32 \| [12] / 2 ")
    # 5. the prediction cost on untrained tiny weights (the stage gpu_check.sh times)
    for stage in ("predict",):
        assert re.search(rf"^{stage} +1 studies: +{NUM} s, {NUM} s/study, peak \d+ MiB", log, flags=re.M), stage
    assert re.search(rf"Budget: whole-ensemble prediction at {NUM} s/study", log)
    assert re.search(rf"Bound \(multiply-adds counted on the first 1 studies; float32 matrix-product peak {NUM} "
                     rf"GFLOP/s at \d+ threads.*\): localiser {NUM} GMAC/study, whole prediction {NUM} GMAC/study", log)
    assert re.search(rf"predict: bound {NUM} s/study, measured {NUM} at 1 studies: {NUM}x the bound", log)
    scaling = _section(out_dir / "RESULTS.md", "scaling")
    assert "untrained, 2 folds of `tests/data/bench_tiny.yaml`" in scaling
    _history_row(scaling, r"\| predict \| - \| - \| - \| - \| \d+ \| yes \|$")   # sizes 25..200 only


def test_bench_quality_smoke(tmp_path, synthetic_dir):
    """The whole quality bench at toy size (tests/data/bench_quality_tiny.yaml) on the session's synthetic
    set, its report in a temporary file."""
    report = tmp_path / "QUALITY.md"
    shared = sorted(p.relative_to(synthetic_dir) for p in synthetic_dir.rglob("*"))
    out = _bench("bench_quality.py", tmp_path, "--config", "tests/data/bench_quality_tiny.yaml",
                 "--data-dir", str(synthetic_dir), "--output-dir", str(tmp_path / "outputs"), "--write",
                 "--out", str(report), cwd=ROOT)
    assert f"wrote {report}" in out
    text = report.read_text()
    assert text.startswith("# Quality bench")
    assert "`attention_bench_tiny`, `attention_bench_tiny_select`" in text
    assert re.search(rf"Run 1 on these outputs \(.*\): {NUM} min", text)
    assert re.search(rf"OOF score judged on rows it was not fitted on: {NUM}", text)
    assert re.search(r"\| attention_bench_tiny_select \| attention_bench_tiny \| [^|]*select=score[^|]*\| "
                     rf"{NUM} -> {NUM}", text), "the recipe switch's row"
    for pool in ("today's recipe", "new recipes", "all models"):   # the ensemble each recipe's models make
        assert re.search(rf"^\| {pool} \| [^|]+ \| {NUM} \[{NUM}, {NUM}\] \| [-+]{NUM} \[", text, re.M), pool
    assert re.search(rf"Half-width of the paired interval .*: median {NUM}, largest {NUM} at annotated points", text)
    assert (tmp_path / "outputs" / "submission.csv").is_file()
    assert sorted(p.relative_to(synthetic_dir) for p in synthetic_dir.rglob("*")) == shared, \
        "the bench wrote into the session's shared data"
