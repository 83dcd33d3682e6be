"""Batches on their way to the model and back: training batches onto the device (``device_batches``),
gathered ahead in a background thread (``prefetch``), and a model's predictions of a table's crops
(``predict_batches``)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from lsdc.augment import BatchAugment, to_device
from lsdc.experiment import select_logits, standardise
from lsdc.train.batches import CropBatches


def device_batches(batches: CropBatches, augment: BatchAugment | None,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]]:
    """Training batches as float (B, C, H, W) in [0, 255] on ``device``, augmented if asked, with their
    conditions (after left-right flips), targets and study ids."""
    for x, cond, y, study in batches:
        if augment is not None:
            xt, cond = augment(x, cond, device)
        else:
            xt = to_device(x, device)
        yield xt, cond, y, study


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` produced in a background thread, up to ``depth`` ahead: the next batch is gathered from the
    memory map and warped while the model steps on this one (NumPy, OpenCV and torch release the GIL).
    The order is unchanged; the thread has finished when the loop ends, so what it draws from a seeded
    generator is exactly what a plain loop would draw."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))
            return
        put(done)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()


@torch.no_grad()
def predict_batches(model: nn.Module, batches: CropBatches, k: int, device: torch.device, mean: torch.Tensor,
                    std: torch.Tensor, channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities (N, K) of each crop's condition, in float32 like every prediction at test
    time (lsdc.inference): out-of-fold numbers are those of the same model on the same crop there."""
    model.eval()
    out = []
    for x, cond, _, _ in batches:
        x = standardise(to_device(x, device), mean, std)
        if channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        out.append(torch.softmax(select_logits(logits.float(), torch.as_tensor(cond, device=device), k), dim=1)
                   .cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)
