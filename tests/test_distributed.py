"""Several processes: folds trained concurrently (one process per device) and one fold trained with
DistributedDataParallel under torchrun, here with the gloo backend and two CPU processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lsdc import config as config_mod
from lsdc.pipeline import PipelineConfig
from lsdc.train import train_experiment, train_on_devices

ROOT = Path(__file__).parents[1]


def _summary(out: Path, experiment: str) -> dict:
    return json.loads((out / experiment / "metrics.json").read_text())


def test_folds_trained_concurrently_match_one_process(smoke_run):
    """Two processes, one fold each, give exactly the folds one process gives training them one after the
    other: each fold's training is seeded, and both sides use one torch thread (thread counts change the
    order of float sums, and that alone moves a small run's OOF score by several hundredths)."""
    cfg = dataclasses.replace(smoke_run["cfg"], tag="devices")
    cfg.train = dataclasses.replace(cfg.train, epochs=2, max_steps_per_epoch=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_experiment(dataclasses.replace(cfg, tag="devices_single"), smoke_run["data"], smoke_run["out"])
    finally:
        torch.set_num_threads(threads)
    summary = train_on_devices(cfg, smoke_run["data"], smoke_run["out"], ["cpu", "cpu"])
    exp = smoke_run["out"] / cfg.experiment
    assert {m["fold"] for m in summary["fold_metrics"]} == {0, 1}
    assert (exp / "oof.csv").is_file() and all((exp / f"fold{f}" / "best.pt").is_file() for f in (0, 1))
    assert summary["oof_score"]["score"] == pytest.approx(single["oof_score"]["score"], abs=1e-6)
    for fold in (0, 1):
        a = pd.read_csv(exp / f"fold{fold}" / "val_preds.csv")
        b = pd.read_csv(smoke_run["out"] / "attention_devices_single" / f"fold{fold}" / "val_preds.csv")
        cols = ["normal_mild", "moderate", "severe"]
        assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-6


def test_torchrun_trains_one_fold_with_ddp_on_gloo(smoke_run, tmp_path):
    """torchrun, 2 processes, gloo: one set of outputs (rank 0 writes), the fold's held-out score within
    0.1 of the same fold trained in one process (each process sees half of every batch; batch norm
    statistics come from half batches), and a rerun resumes (keeps the fold)."""
    base = dataclasses.replace(smoke_run["cfg"], tag="ddp")
    base.folds = dataclasses.replace(base.folds, train_folds=[0])
    base.train = dataclasses.replace(base.train, epochs=3, patience=3, augment=False)
    config_mod.save(base, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "02_train.py"), "--config", str(tmp_path / "ddp.yaml"),
           "--data-dir", str(smoke_run["data"]), "--output-dir", str(smoke_run["out"]), "--set", "train.device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = smoke_run["out"] / base.experiment
    fold = json.loads((exp / "fold0" / "metrics.json").read_text())
    assert fold["processes"] == 2 and len(pd.read_csv(exp / "fold0" / "epochs.csv")) == 3
    assert not (exp / "fold0" / "last.pt").exists() and (exp / "oof.csv").is_file()
    single_cfg = dataclasses.replace(base, tag="ddp_single")
    single = train_experiment(single_cfg, smoke_run["data"], smoke_run["out"])
    ddp = _summary(smoke_run["out"], base.experiment)
    assert ddp["oof_score"]["score"] == pytest.approx(single["oof_score"]["score"], abs=0.1), (ddp, single)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "fold 0 already trained; kept" in again.stderr


def test_pipeline_takes_the_devices_to_train_on():
    cfg = config_mod.load(PipelineConfig, None, ["devices=[cuda:0,cuda:1]"])
    assert cfg.devices == ["cuda:0", "cuda:1"]
    assert config_mod.load(PipelineConfig).devices == []
