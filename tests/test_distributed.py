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
from torch import nn

from lsdc import config as config_mod
from lsdc.experiment import ExperimentConfig, resolve_device
from lsdc.models import create_model
from lsdc.pipeline import PipelineConfig
from lsdc.train import CropBatches, sync_batchnorm, train_experiment, train_on_devices

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
    """torchrun, 2 processes, gloo: one set of outputs (rank 0 writes) and a rerun resumes (keeps the fold).
    After every epoch the processes check that their weights are bit for bit the same (lsdc.train.rank_gap)
    and stop with an error otherwise, so this run finishing means the gradients were averaged: without
    DistributedDataParallel each process would follow its own half of the data and drift apart."""
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
    assert "weights differ" not in proc.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "fold 0 already trained; kept" in again.stderr


def test_every_process_takes_the_same_number_of_batches():
    """33 crops over 2 processes in batches of 5: each takes 4 batches (17 crops, the order padded with its
    first crop), so no process waits on an all-reduce the other never joins; together they cover every crop."""
    table = pd.DataFrame({"source": "annotated", "row": np.arange(33), "cond": 0, "target": np.arange(33),
                          "study_id": np.arange(33) // 5})
    arrays = {"annotated": np.zeros((33, 2, 2, 1), np.uint8)}
    shards = [CropBatches(table, arrays, 5, True, seed=1, shard=(r, 2)) for r in (0, 1)]
    batches = [list(b) for b in shards]
    assert [len(b) for b in shards] == [len(b) for b in batches] == [4, 4]
    assert sum(len(x[0]) for x in batches[0]) == sum(len(x[0]) for x in batches[1]) == 17
    assert {int(t) for b in batches for x in b for t in x[2]} == set(range(33))
    single = CropBatches(table, arrays, 5, True, seed=1)
    assert len(single) == len(list(single)) == 7


def test_pipeline_takes_the_devices_to_train_on():
    cfg = config_mod.load(PipelineConfig, None, ["devices=[cuda:0,cuda:1]"])
    assert cfg.devices == ["cuda:0", "cuda:1"]
    assert config_mod.load(PipelineConfig).devices == []


def test_training_batches_never_end_with_a_single_crop():
    """Batch norm cannot train on one sample: 33 shuffled crops in batches of 4 give 8 batches of 4 (the odd
    crop waits for another epoch's order); in order (prediction) every crop is kept."""
    table = pd.DataFrame({"source": "annotated", "row": np.arange(33), "cond": 0, "target": np.arange(33),
                          "study_id": np.arange(33) // 5})
    arrays = {"annotated": np.zeros((33, 2, 2, 1), np.uint8)}
    train = CropBatches(table, arrays, 4, True, seed=0)
    assert len(train) == 8 and [len(x[2]) for x in train] == [4] * 8
    assert sum(len(x[2]) for x in CropBatches(table, arrays, 4, False)) == 33


def test_batches_by_study_keep_each_studys_crops_together():
    """by_study (the metric-shaped loss): 7 studies of 5 crops (the last of 3) in a seeded random order, each
    study's crops consecutive, every crop once; another epoch, another order."""
    table = pd.DataFrame({"source": "annotated", "row": np.arange(33), "cond": 0, "target": np.arange(33),
                          "study_id": 100 + np.arange(33) // 5})
    arrays = {"annotated": np.zeros((33, 2, 2, 1), np.uint8)}
    batches = CropBatches(table, arrays, 10, True, seed=3, by_study=True)
    order = np.concatenate([x[2] for x in CropBatches(table, arrays, 40, True, seed=3, by_study=True)])
    studies = 100 + order // 5
    assert sorted(order.tolist()) == list(range(33))
    runs = [s for i, s in enumerate(studies) if i == 0 or s != studies[i - 1]]
    assert len(runs) == 7 == len(set(runs))                       # one run of consecutive crops per study
    first = [x[3].tolist() for x in batches]
    assert [len(b) for b in first] == [10, 10, 10, 3]
    assert sum(first, []) == studies.tolist() and first == [x[3].tolist() for x in batches]   # seeded
    batches.epoch = 1
    assert sum([x[3].tolist() for x in batches], []) != studies.tolist()


def test_sync_batchnorm_on_gpus_only_and_sharing_the_optimisers_parameters():
    model = create_model(config_mod.load(ExperimentConfig, ROOT / "configs" / "smoke.yaml").network_config())
    params = {id(p) for p in model.parameters()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0
    synced = sync_batchnorm(model, torch.device("cuda", 0), True)   # the conversion itself needs no GPU
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    assert {id(p) for p in synced.parameters()} == params          # the optimiser still steps these
    cpu = create_model(config_mod.load(ExperimentConfig, ROOT / "configs" / "smoke.yaml").network_config())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in sync_batchnorm(cpu, torch.device("cpu"), True).modules())
    assert sync_batchnorm(model, torch.device("cuda", 0), False) is model


def test_cuda_means_the_processs_own_gpu_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)     # an explicit index is kept
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda", 0)
