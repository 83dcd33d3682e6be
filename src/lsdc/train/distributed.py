"""Distributed training: this process's place in a ``torchrun`` run, the collective steps every rank takes
together, the check that the ranks' weights stay in step, and SyncBatchNorm."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__package__)   # the package's logger: log lines name lsdc.train, as before the split


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_context(device: torch.device) -> Dist:
    """Join the process group ``torchrun`` describes in the environment (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(dist.get_rank(), dist.get_world_size())


def barrier(d: Dist) -> None:
    """Every rank waits here for the others (a single process goes on)."""
    if d.world > 1:
        dist.barrier()


RANK_GAP_TOL = 1e-6   # checksum spread allowed between ranks; unaveraged gradients drift far beyond it at once


def rank_gap(d: Dist, model: nn.Module) -> float:
    """How far the ranks' parameters are apart: the spread over ranks of a checksum of every parameter (the
    sum of their absolute values). Zero when DistributedDataParallel keeps them in step (every rank applies
    the same averaged gradients); anything more means the gradients were not averaged."""
    if d.world == 1:
        return 0.0
    total = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
    with torch.no_grad():
        for p in model.parameters():
            total[0] += p.detach().double().abs().sum()
    total[1] = -total[0]
    dist.all_reduce(total, op=dist.ReduceOp.MAX)     # (max, -min) of the checksum over ranks
    return float(total[0] + total[1])


def from_main(d: Dist, value: Any) -> Any:
    """Rank 0's value on every rank (the decisions of a distributed run must be the same everywhere)."""
    if d.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_batchnorm(model: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
    """Batch norm layers as SyncBatchNorm when asked and possible (CUDA only: gloo cannot), for a
    distributed run whose per-process batches are small."""
    if not enabled:
        return model
    if device.type != "cuda":
        log.info("train.sync_bn: SyncBatchNorm needs CUDA; batch norm statistics stay per process on %s", device)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
