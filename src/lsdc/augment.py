"""Training augmentation in batches: the paper's ranges, drawn once per batch and applied where the batch is.

Per crop, one affine map in pixel space composes a rotation (+/- rotate_deg), one scale for both axes
(scale range; the paper scales uniformly), a translation (+/- translate_px at 224 px, scaled with the
crop), a vertical flip (probability vflip) and, for axial (subarticular) crops only, a left-right flip
(probability lr_flip) that swaps the left/right condition with it: sagittal crops are never flipped
left-right, that would swap front and back. The parameters come from one seeded generator, so a run
is reproducible. The map is applied by ``torch.nn.functional.grid_sample`` on a GPU (the whole batch at
once, where the data already is) and by OpenCV on a CPU (per crop, in threads: several times cheaper
there than grid_sample); both sample bilinearly with zeros outside the crop and agree to about one grey
level.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lsdc import schema
from lsdc.experiment import COND_INDEX
from lsdc.train.config import TrainConfig

_SUBARTICULAR = np.array([schema.CONDITION_INFO[c].group == "subarticular" for c in schema.CONDITIONS])
# Condition index after a left-right flip: left <-> right subarticular, the others unchanged.
LR_SWAP = np.array([COND_INDEX[schema.condition_for("subarticular", "right" if schema.CONDITION_INFO[c].side == "left"
                                                     else "left")] if _SUBARTICULAR[i] else i
                    for i, c in enumerate(schema.CONDITIONS)])


def lr_flip_condition(cond: int) -> int:
    """Condition index after a left-right flip of an axial crop: left <-> right subarticular."""
    return int(LR_SWAP[cond])


@dataclass
class Draw:
    """One batch's augmentation: per crop the 2 x 3 map from output to input pixels, and whether it was
    flipped left-right (its condition swapped)."""

    matrices: np.ndarray   # (B, 2, 3) float64, output pixel (x, y, 1) -> input pixel
    lr_flipped: np.ndarray  # (B,) bool


def draw(cond: np.ndarray, size: int, tcfg: TrainConfig, generator: torch.Generator) -> Draw:
    """The random maps of a batch of ``size`` px crops of conditions ``cond`` (B,)."""
    n = len(cond)
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64).numpy()
    angle = np.deg2rad((2 * u[:, 0] - 1) * tcfg.rotate_deg)
    lo, hi = tcfg.scale
    scale = lo + u[:, 1] * (hi - lo)
    shift = (2 * u[:, 2:4] - 1) * tcfg.translate_px * size / 224
    vflip = u[:, 4] < tcfg.vflip
    lr = (u[:, 5] < tcfg.lr_flip) & _SUBARTICULAR[np.asarray(cond)]
    c = (size - 1) / 2
    matrices = np.zeros((n, 2, 3))
    for k in range(n):
        # Forward map: flips about the centre, then rotation and scale about the centre, then the shift.
        flip = np.diag([-1.0 if lr[k] else 1.0, -1.0 if vflip[k] else 1.0])
        cos, sin = math.cos(angle[k]) * scale[k], math.sin(angle[k]) * scale[k]
        a = np.array([[cos, -sin], [sin, cos]]) @ flip
        t = np.array([c, c]) + shift[k] - a @ np.array([c, c])
        inv = np.linalg.inv(a)                       # output -> input: p_in = inv (p_out - t)
        matrices[k, :, :2] = inv
        matrices[k, :, 2] = -inv @ t
    return Draw(matrices, lr)


def warp_cv2(x: np.ndarray, d: Draw, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Apply a draw to uint8 crops (B, H, W, C) with OpenCV (CPU)."""
    out = np.empty_like(x)
    size = x.shape[2], x.shape[1]

    def one(k: int) -> None:
        for c in range(0, x.shape[3], 4):  # OpenCV warps at most 4 channels at a time
            img = cv2.warpAffine(np.ascontiguousarray(x[k, ..., c:c + 4]), d.matrices[k], size,
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
            out[k, ..., c:c + 4] = img.reshape(out.shape[1], out.shape[2], -1)

    if pool is None:
        for k in range(len(x)):
            one(k)
    else:
        list(pool.map(one, range(len(x))))
    return out


def warp_torch(x: torch.Tensor, d: Draw) -> torch.Tensor:
    """Apply a draw to float crops (B, C, H, W) with ``grid_sample`` on their device (a GPU)."""
    b, _, h, w = x.shape
    # Pixel -> normalised coordinates (align_corners=False): x_n = (2 x + 1) / W - 1.
    to_n = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    from_n = np.linalg.inv(to_n)
    full = np.concatenate([d.matrices, np.tile([[[0, 0, 1.0]]], (b, 1, 1))], axis=1)
    theta = (to_n @ full @ from_n)[:, :2]
    grid = F.affine_grid(torch.as_tensor(theta, dtype=x.dtype, device=x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 crops (B, H, W, C) -> float (B, C, H, W) in [0, 255] on ``device`` (through pinned memory to a GPU)."""
    t = torch.from_numpy(x)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float()


class BatchAugment:
    """Draws and applies the augmentation of each training batch on its device; seeded per fold."""

    def __init__(self, tcfg: TrainConfig, size: int, seed: int, threads: int = 2) -> None:
        self.tcfg, self.size = tcfg, size
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def __call__(self, x: np.ndarray, cond: np.ndarray, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 crops (B, H, W, C) and their conditions -> float (B, C, H, W) in [0, 255] on ``device`` and
        the conditions after left-right flips."""
        d = draw(cond, self.size, self.tcfg, self.generator)
        cond = np.where(d.lr_flipped, LR_SWAP[np.asarray(cond)], cond)
        if device.type == "cpu":
            return to_device(warp_cv2(x, d, self.pool), device), cond
        return warp_torch(to_device(x, device), d), cond
