#!/usr/bin/env python
"""Training data path: crops gathered from the crop array and augmented in batches, against the PNG +
albumentations loader training used before (written out in this script as the reference).

Both sides turn the same crops (a fresh synthetic set cut by ``lsdc.crops.prepare``: PNGs and
``crops.npy``) into standardised float batches (B, C, H, W) with the paper's augmentation (uniform scale
0.8-1.2, +/-20 px at 224, +/-15 degrees, vertical flip), in shuffled order, one pass over all crops per
round; the sides alternate round by round and the speed-up is the median of per-round ratios.

- reference: ``torch.utils.data.DataLoader`` over a Dataset that reads each PNG (``lsdc.crops.load_crop``),
  applies ``A.Affine(keep_ratio=True)`` and a vertical flip per crop and standardises it (the code training
  ran until the crop array), ``--workers`` loader processes.
- project, host side of a GPU run: what the CPU does per batch when training on a GPU: gather from the
  memory-mapped array (``CropBatches``) into pinned-size uint8 batches; augmentation and standardisation
  then run on the GPU (``warp_torch``, ``standardise``), which the CUDA section measures.
- project, whole CPU path: gather + OpenCV warp in ``--workers`` threads + float + standardise
  (``device_batches`` with ``BatchAugment`` on the CPU, through ``prefetch``), as CPU training runs it.

With ``--device cuda`` it also times the attention model's training step fed by the data path
(``prefetch(device_batches(...))``: gather, host-to-device copy, ``grid_sample`` warp, standardise)
against the same step on a batch already on the device; target: at most 10% slower.

    python benchmarks/bench_data.py                  # CPU, 16 synthetic studies
    python benchmarks/bench_data.py --device cuda --write
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

import common
from lsdc.augment import BatchAugment
from lsdc.crops import INDEX_CSV, CropConfig, load_array, load_crop, prepare
from lsdc.experiment import (
    COND_INDEX,
    N_CONDITIONS,
    autocast,
    resolve_device,
    select_logits,
    standardise,
    to_input,
)
from lsdc.losses import weighted_ce
from lsdc.models import ModelConfig, create_model
from lsdc.synthetic import SyntheticConfig, generate
from lsdc.train import CropBatches, device_batches, prefetch
from lsdc.train.config import TrainConfig

TARGET = 5.0      # host-side data path vs the PNG loader, CPU
GPU_TARGET = 1.10  # fed step / step on device tensors
HISTORY = ("| date | machine | load (1 min) | crops | size | workers | PNG loader (img/s) | host side (img/s) "
           "| CPU path (img/s) | host/PNG | CPU/PNG | target host >= 5x |")
GPU_HISTORY = ("| date | GPU | batch | size | step on device tensors (img/s) | step fed by the data path (img/s) "
               "| fed/device time | target <= 1.10 |")


class PngDataset(Dataset):
    """The loader training used before the crop array: one PNG decoded and augmented per item."""

    def __init__(self, paths: list[str], cond: np.ndarray, n_slices: int, mean: np.ndarray, std: np.ndarray,
                 tcfg: TrainConfig, size: int, seed: int = 0) -> None:
        self.paths, self.cond, self.n_slices, self.mean, self.std = paths, cond, n_slices, mean, std
        t = int(round(tcfg.translate_px * size / 224))
        self.affine = A.Affine(scale=tuple(tcfg.scale), keep_ratio=True, translate_px={"x": (-t, t), "y": (-t, t)},
                               rotate=(-tcfg.rotate_deg, tcfg.rotate_deg), border_mode=0, fill=0, p=1.0)
        self.affine.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.vflip = tcfg.vflip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.affine(image=load_crop(self.paths[i], self.n_slices))["image"]
        if self.rng.random() < self.vflip:
            img = img[::-1]
        return to_input(img[None], self.mean, self.std)[0], int(self.cond[i])


def png_pass(loader: DataLoader) -> int:
    n = 0
    for x, _ in loader:
        n += len(x)
    return n


def host_pass(batches: CropBatches) -> int:
    """Gather only (the host's share of a GPU run), into pinned memory when CUDA is present."""
    n = 0
    for x, *_ in prefetch(iter(batches)):
        t = torch.from_numpy(x)
        if torch.cuda.is_available():
            t = t.pin_memory()
        n += len(t)
    return n


def cpu_pass(batches: CropBatches, augment: BatchAugment, mean: torch.Tensor, std: torch.Tensor) -> int:
    n = 0
    for x, *_ in prefetch(device_batches(batches, augment, torch.device("cpu"))):
        n += len(standardise(x, mean, std))
    return n


def make_crops(args: argparse.Namespace, root: Path) -> tuple[pd.DataFrame, np.ndarray, CropConfig]:
    data = root / "data"
    generate(data, SyntheticConfig(train_studies=args.studies, test_studies=0, seed=args.seed), show_progress=False)
    cfg = CropConfig(size=args.size, n_slices=args.n_slices)
    crops_dir = prepare(data, root / "out", cfg, show_progress=False)
    index = pd.read_csv(crops_dir / INDEX_CSV, keep_default_na=False)
    index["path"] = [str(crops_dir / p) for p in index.path]
    index["cond"] = index.condition.map(COND_INDEX)
    index["target"] = 0
    index["row"] = np.arange(len(index))
    index["source"] = "annotated"
    return index, load_array(crops_dir), cfg


def cpu_section(args: argparse.Namespace, index: pd.DataFrame, array: np.ndarray, cfg: CropConfig) -> dict:
    tcfg = TrainConfig()
    n_slices = cfg.n_slices
    mean = np.full(n_slices, 0.3, np.float32)
    std = np.full(n_slices, 0.2, np.float32)
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    png = PngDataset(index.path.tolist(), index.cond.to_numpy(), n_slices, mean, std, tcfg, cfg.size)
    loader = DataLoader(png, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    batches = CropBatches(index, {"annotated": array}, args.batch, True)
    augment = BatchAugment(tcfg, cfg.size, seed=0, threads=args.workers)
    sides = {"png": lambda: png_pass(loader), "host": lambda: host_pass(batches),
             "cpu": lambda: cpu_pass(batches, augment, mean_t, std_t)}
    for run in sides.values():   # warm-up: loader workers started, page cache filled
        run()
    rates: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        batches.epoch = r
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            t0 = time.perf_counter()
            n = sides[name]()
            rates[name].append(n / (time.perf_counter() - t0))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()))
    return {"rates": {k: common.median(v) for k, v in rates.items()},
            "host_ratio": common.median([h / p for h, p in zip(rates["host"], rates["png"], strict=True)]),
            "cpu_ratio": common.median([c / p for c, p in zip(rates["cpu"], rates["png"], strict=True)])}


def gpu_section(args: argparse.Namespace, index: pd.DataFrame, array: np.ndarray, cfg: CropConfig,
                device: torch.device) -> dict:
    """Training step of the attention model fed by the data path vs on a batch already on the device."""
    torch.backends.cudnn.benchmark = True
    k = 3   # (runs on a CPU too, to check the code path; the figure that counts is the GPU's)
    model = create_model(ModelConfig(name="attention", num_classes=N_CONDITIONS * k, in_chans=cfg.n_slices))
    model = model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    weights = torch.tensor([1.0, 2.0, 4.0], device=device)
    mean = torch.full((cfg.n_slices,), 0.3, device=device)
    std = torch.full((cfg.n_slices,), 0.2, device=device)
    batches = CropBatches(index, {"annotated": array}, args.gpu_batch, True)
    augment = BatchAugment(TrainConfig(), cfg.size, seed=0)
    fixed_x = torch.rand(args.gpu_batch, cfg.n_slices, cfg.size, cfg.size, device=device) * 255
    fixed_c = torch.randint(0, N_CONDITIONS, (args.gpu_batch,), device=device)
    fixed_y = torch.randint(0, k, (args.gpu_batch,), device=device)

    def step(x: torch.Tensor, cond: torch.Tensor, y: torch.Tensor) -> None:
        x = standardise(x, mean, std).contiguous(memory_format=torch.channels_last)
        with autocast(device, True):
            logits = model(x)
        loss = weighted_ce(select_logits(logits.float(), cond, k), y, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def on_device(steps: int) -> int:
        for _ in range(steps):
            step(fixed_x, fixed_c, fixed_y)
        return steps * args.gpu_batch

    feed = prefetch(_endless(batches, augment, device))

    def fed(steps: int) -> int:
        n = 0
        for x, cond, y, _ in itertools.islice(feed, steps):
            step(x, torch.as_tensor(cond, device=device), torch.as_tensor(y, device=device))
            n += len(y)
        return n

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sides = {"device": on_device, "fed": fed}
    for run in sides.values():
        run(5)
    sync()
    rates: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name in (sides if r % 2 == 0 else reversed(list(sides))):
            sync()
            t0 = time.perf_counter()
            n = sides[name](args.gpu_steps)
            sync()
            rates[name].append(n / (time.perf_counter() - t0))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()))
    return {"rates": {k: common.median(v) for k, v in rates.items()},
            "ratio": common.median([d / f for d, f in zip(rates["device"], rates["fed"], strict=True)]),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def _endless(batches: CropBatches, augment: BatchAugment, device: torch.device) -> Iterator:
    """Epoch after epoch of device batches (a GPU consumes a 16-study set in a fraction of a second)."""
    for epoch in itertools.count():
        batches.epoch = epoch
        yield from device_batches(batches, augment, device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=16, help="synthetic training studies (about 25 crops each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--n-slices", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="reference loader processes = project warp threads")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: also the fed training step")
    p.add_argument("--fed-step", action=argparse.BooleanOptionalAction, default=None,
                   help="time the fed training step on --device (default: on CUDA only; on a CPU it checks the "
                        "code path, the figure that counts is the GPU's)")
    p.add_argument("--gpu-batch", type=int, default=32)
    p.add_argument("--gpu-steps", type=int, default=100, help="steps per round and side on the GPU")
    p.add_argument("--write", action="store_true", help="record this run in benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = common.load_average()
    root = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        index, array, cfg = make_crops(args, root)
        print(f"{len(index)} crops of {cfg.size} px x {cfg.n_slices} slices from {args.studies} studies")
        cpu = cpu_section(args, index, array, cfg)
        fed = args.fed_step if args.fed_step is not None else args.device == "cuda"
        gpu = gpu_section(args, index, array, cfg, resolve_device(args.device)) if fed else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = common.load_average()
    r = cpu["rates"]
    row = (f"| {common.now()[:16]} UTC | {common.nproc()} x {common.cpu_model()} | {load_before[0]:.2f} | {len(index)} "
           f"| {cfg.size} | {args.workers} | {r['png']:.0f} | {r['host']:.0f} | {r['cpu']:.0f} "
           f"| {cpu['host_ratio']:.1f}x | {cpu['cpu_ratio']:.2f}x | {'yes' if cpu['host_ratio'] >= TARGET else 'NO'} |")
    print(f"PNG loader {r['png']:.0f} img/s; host side of a GPU run {r['host']:.0f} img/s ({cpu['host_ratio']:.1f}x); "
          f"whole CPU path {r['cpu']:.0f} img/s ({cpu['cpu_ratio']:.2f}x)")
    print(row)
    if gpu:
        g = gpu["rates"]
        gpu_row = (f"| {common.now()[:16]} UTC | {gpu['gpu']} | {args.gpu_batch} | {cfg.size} | {g['device']:.0f} "
                   f"| {g['fed']:.0f} | {gpu['ratio']:.3f} | {'yes' if gpu['ratio'] <= GPU_TARGET else 'NO'} |")
        print(f"step on device tensors {g['device']:.0f} img/s, fed by the data path {g['fed']:.0f} img/s: "
              f"{gpu['ratio']:.3f}x the time")
        print(gpu_row)
    if args.write:
        lines = ["## Data path (`bench_data.py`)", "",
                 "Crops gathered from the memory-mapped crop array and augmented in batches, against the PNG + "
                 "albumentations DataLoader training used before (in the script as the reference), same crops, "
                 "same run, sides alternating round by round (median of per-round ratios). Host side of a GPU "
                 "run: the gather alone (augmentation runs on the GPU). Whole CPU path: gather + OpenCV warp in "
                 "threads + standardise, as CPU training runs it. Target: host side at least 5x the PNG loader.",
                 "", "Latest run:", "", f"- Command: `{common.command_line()}`",
                 *common.machine_lines(args.device, load_before, load_after),
                 f"- Data: {len(index)} crops of {cfg.size} px x {cfg.n_slices} slices from {args.studies} "
                 f"synthetic studies, batch {args.batch}, {args.workers} loader processes / warp threads",
                 f"- Result: PNG loader {r['png']:.0f} img/s; host side {r['host']:.0f} img/s "
                 f"(**{cpu['host_ratio']:.1f}x**); whole CPU path {r['cpu']:.0f} img/s (**{cpu['cpu_ratio']:.2f}x**)",
                 "", *common.history_table("All runs:", HISTORY, [*common.history_rows("data", HISTORY), row])]
        common.write_section("data", "\n".join(lines))
        if gpu:   # the CUDA figure; a CPU run of the fed step (a code-path check) goes to a section of its own
            cuda = args.device == "cuda"
            section = "data_cuda" if cuda else "data_fed_cpu"
            glines = [f"### Data path on {'CUDA' if cuda else 'CPU, fed step (a code-path check)'} "
                      f"(`bench_data.py --device {args.device}`)", "",
                      f"The attention model's training step (batch {args.gpu_batch} at {cfg.size} px"
                      + (", bf16 autocast, channels_last" if cuda else ", channels_last")
                      + ") fed by the data path ("
                      + ("gather, pinned host-to-device copy, grid_sample augmentation" if cuda
                         else "gather, OpenCV warp in threads")
                      + ", standardise, prefetched in a thread) against the same step on a batch already on the "
                      "device. "
                      "Target: at most 1.10x the time.", "", f"- Command: `{common.command_line()}`",
                      f"- Date: {common.now()}",
                      f"- Result: on device {g['device']:.0f} img/s, fed {g['fed']:.0f} img/s, "
                      f"**{gpu['ratio']:.3f}x** the time",
                      "", *common.history_table("All runs:", GPU_HISTORY,
                                                [*common.history_rows(section, GPU_HISTORY), gpu_row])]
            common.write_section(section, "\n".join(glines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
