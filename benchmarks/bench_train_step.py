#!/usr/bin/env python
"""Training throughput and peak memory of the paper's attention model against densenet201 and resnet101.

One step = forward + weighted cross-entropy on each crop's condition logits (``select_logits``,
``weighted_ce`` with weights 1/2/4, as ``lsdc.train`` does) + backward + Adam step, on random input
already on the device (data loading is not measured). Models are built with
``create_model(ModelConfig(name, num_classes=15, in_chans=3))``. All models live in one process and
are timed round by round, interleaved (the model order rotates each round); the figures are medians,
and the attention/densenet201 ratio is the median of per-round ratios. On CUDA the step runs under
bf16 autocast with channels_last (as ``lsdc.train`` does with ``amp`` and ``channels_last``).

Peak memory is measured per model in a fresh child process (so models do not see each other's
allocations): on CUDA ``torch.cuda.max_memory_allocated`` over a few steps (parameters, gradients,
Adam state and activations); on CPU the peak RSS delta, i.e. ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after a few steps minus the RSS (``/proc/self/statm``) just before the first step (activations,
gradients, Adam state and allocator caching; the parameters themselves are excluded).

    python benchmarks/bench_train_step.py                        # CPU: batch 8 by default
    python benchmarks/bench_train_step.py --device cuda --write  # GPU: batch 32, bf16, channels_last
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

import common
from lsdc.experiment import N_CONDITIONS, autocast, resolve_device, select_logits
from lsdc.losses import weighted_ce
from lsdc.models import ModelConfig, count_macs, count_parameters, create_model

MODELS = ("attention", "densenet201", "resnet101")
REFERENCE = "densenet201"
K = 3  # severities: N_CONDITIONS x K = 15 logits
TARGET = 0.5      # project target for attention / densenet201 step time (the paper reports 0.59)
PAPER = 0.59
HISTORY = ("| date | machine | load (1 min) | device | batch | size | precision | attention (img/s) "
           "| densenet201 (img/s) | resnet101 (img/s) | attention/densenet201 time | target <= 0.5 |")


@dataclass
class Setup:
    """What one timed step needs."""

    device: torch.device
    batch: int
    size: int
    amp: bool
    channels_last: bool
    compile: bool = False
    backend: str = "inductor"


@dataclass
class Bench:
    """One model ready to step: the model, its optimizer and a fixed batch."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    x: torch.Tensor
    cond: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor


def build(name: str, s: Setup, seed: int = 0) -> Bench:
    """Model, Adam and a random batch on the device, in training mode."""
    torch.manual_seed(seed)
    model = create_model(ModelConfig(name=name, num_classes=N_CONDITIONS * K, in_chans=3)).to(s.device)
    x = torch.randn(s.batch, 3, s.size, s.size, device=s.device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    if s.compile:
        model = torch.compile(model, backend=s.backend)   # compiled on the first (warm-up) step
    cond = torch.randint(0, N_CONDITIONS, (s.batch,), device=s.device)
    y = torch.randint(0, K, (s.batch,), device=s.device)
    weights = torch.tensor([1.0, 2.0, 4.0], device=s.device)
    return Bench(name, model, opt, x, cond, y, weights)


def step(b: Bench, s: Setup) -> None:
    """One training step, as in ``lsdc.train.fold.train_epoch``."""
    with autocast(s.device, s.amp):
        logits = b.model(b.x)
    loss = weighted_ce(select_logits(logits.float(), b.cond, K), b.y, b.weights)
    b.opt.zero_grad(set_to_none=True)
    loss.backward()
    b.opt.step()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(b: Bench, s: Setup, n: int) -> list[float]:
    """Seconds of each of ``n`` steps (synchronised on CUDA)."""
    out = []
    for _ in range(n):
        sync(s.device)
        t0 = time.perf_counter()
        step(b, s)
        sync(s.device)
        out.append(time.perf_counter() - t0)
    return out


# ----------------------------------------------------------------------------- memory, in a child process


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe_memory(name: str, s: Setup, steps: int, threads: int) -> dict[str, float]:
    """Peak memory (MiB) of ``steps`` training steps of one model; run in a fresh process."""
    torch.set_num_threads(threads)
    b = build(name, s)
    if s.device.type == "cuda":
        sync(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
        before = torch.cuda.memory_allocated(s.device)
        timed_steps(b, s, steps)
        peak = torch.cuda.max_memory_allocated(s.device)
        return {"peak_mib": peak / 2**20, "delta_mib": (peak - before) / 2**20}
    before = _rss_bytes()
    timed_steps(b, s, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_mib": peak / 2**20, "delta_mib": (peak - before) / 2**20}


def memory_table(names: list[str], s: Setup, steps: int, threads: int) -> dict[str, dict[str, float]]:
    """Peak memory of each model, each in its own spawned process, one after the other."""
    out = {}
    ctx = mp.get_context("spawn")
    for name in names:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            out[name] = pool.submit(probe_memory, name, s, steps, threads).result()
        print(f"memory {name}: peak {out[name]['peak_mib']:.0f} MiB, delta {out[name]['delta_mib']:.0f} MiB")
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--models", nargs="+", default=list(MODELS), help="model names (create_model)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 32 on CUDA, 8 on CPU)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model per round (CUDA 10, CPU 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (CUDA 5, CPU 1)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast (CUDA only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (CUDA only)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each model (compiled during the warm-up steps; recorded in its own section)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile's backend (inductor; 'eager' only checks the code path in seconds on a CPU, "
                        "where inductor takes minutes)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure peak memory (one child process per model)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own; 1 is steadier on a shared machine)")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=False,
                   help="record this run in benchmarks/RESULTS.md (--no-write undoes an earlier --write)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = common.load_average()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    s = Setup(device=device, batch=args.batch or (32 if cuda else 8), size=args.size,
              amp=args.amp and cuda, channels_last=args.channels_last and cuda, compile=args.compile,
              backend=args.compile_backend)
    steps = args.steps or (10 if cuda else 2)
    rounds = args.rounds or 5
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True
    names = list(dict.fromkeys(args.models))
    plural = "s" if threads > 1 else ""
    dev_name = torch.cuda.get_device_name(device) if cuda else f"cpu ({threads} torch thread{plural})"
    precision = "bf16 autocast, channels_last" if s.amp and s.channels_last else \
        "bf16 autocast" if s.amp else "fp32"
    if s.compile:
        precision += ", torch.compile" + ("" if s.backend == "inductor" else f" ({s.backend})")
    print(f"device {dev_name}; batch {s.batch} x 3 x {s.size} x {s.size}; {precision}; "
          f"{rounds} rounds x {steps} steps, {warmup} warm-up")

    # Size (on CPU, batch 1, before moving anything to the device).
    sizes: dict[str, dict[str, int]] = {}
    for name in names:
        m = create_model(ModelConfig(name=name, num_classes=N_CONDITIONS * K, in_chans=3))
        sizes[name] = {"params": count_parameters(m), "macs": count_macs(m, (1, 3, s.size, s.size))}
        del m
    mem = memory_table(names, s, max(2, min(warmup + 1, 4)), threads) if args.memory else {}

    benches = {name: build(name, s) for name in names}
    for b in benches.values():
        timed_steps(b, s, warmup)
    times: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t = timed_steps(benches[name], s, steps)
            times[name] += t
            per_round[name].append(common.median(t))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {per_round[n][-1] * 1000:.0f} ms" for n in names))
    load_after = common.load_average()

    med = {n: common.median(times[n]) for n in names}

    def ratio_to(ref: str, name: str) -> float | None:
        if ref not in per_round:
            return None
        return common.median([a / b for a, b in zip(per_round[name], per_round[ref])])

    header = ("| model | params (M) | GMACs/image | median step (ms) | images/s | step time vs densenet201 "
              "| peak memory (MiB) |")
    mem_kind = "CUDA max_memory_allocated" if cuda else "CPU peak RSS delta"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for n in names:
        rel = ratio_to(REFERENCE, n)
        mm = f"{mem[n]['peak_mib']:.0f}" if cuda and n in mem else f"{mem[n]['delta_mib']:.0f}" if n in mem else "-"
        lines.append(f"| {n} | {sizes[n]['params'] / 1e6:.2f} | {sizes[n]['macs'] / 1e9:.2f} | {med[n] * 1000:.0f} "
                     f"| {s.batch / med[n]:.1f} | {'-' if rel is None else f'{rel:.2f}'} | {mm} |")
    ratio = ratio_to(REFERENCE, "attention") if "attention" in names else None
    print()
    print("\n".join(lines))
    print(f"(peak memory: {mem_kind})")
    if ratio is not None:
        ok = "yes" if ratio <= TARGET else "NO"
        print(f"attention/densenet201 step time: {ratio:.2f} (median of {rounds} per-round ratios; "
              f"target <= {TARGET}: {ok}; paper {PAPER})")

    if args.write:
        needed = ("attention", REFERENCE) if s.compile else MODELS
        if not all(n in names for n in needed):
            print("error: --write needs " + ", ".join(needed), file=sys.stderr)
            return 2
        section = f"train_step_{device.type}" + ("_compile" if s.compile else "")
        ok = "yes" if ratio is not None and ratio <= TARGET else "NO"
        machine = f"{common.nproc()} x {common.cpu_model()}" + ("" if not cuda else f", {dev_name}")
        row = (f"| {common.now()} | {machine} | {load_before[0]:.2f} | {device.type} | {s.batch} | {s.size} "
               f"| {precision} | " + " | ".join(f"{s.batch / med[n]:.1f}" if n in med else "-" for n in MODELS)
               + f" | {ratio:.2f} | {ok} |")
        rows = common.history_rows(section, HISTORY) + [row]
        body: list[str] = [
            f"### Training step on {'CUDA' if cuda else 'CPU'}{' with torch.compile' if s.compile else ''} "
            "(`bench_train_step.py`)",
            "",
            "Latest run:",
            "",
            f"- Command: `{common.command_line()}`",
            *common.machine_lines(dev_name, load_before, load_after),
            f"- Setup: batch {s.batch} x 3 x {s.size} x {s.size}, {precision}, Adam, weighted CE on 15 logits; "
            f"{rounds} interleaved rounds x {steps} timed steps per model after {warmup} warm-up step(s); "
            "random input already on the device (no data loading)",
            f"- Peak memory: {mem_kind} over a few steps, each model in a fresh child process"
            + ("" if cuda else " (activations, gradients, Adam state; resource.getrusage ru_maxrss minus RSS "
               "before the first step; psutil not used)"),
            f"- **attention/densenet201 step time: {ratio:.2f}** (target <= {TARGET}: {ok}; the paper reports "
            f"{PAPER})",
            "",
            *lines,
            "",
            *common.history_table("All runs on this device type:", HISTORY, rows),
        ]
        print(f"wrote {common.write_section(section, chr(10).join(body))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
