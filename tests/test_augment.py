"""Batch augmentation: the paper's ranges, uniform scale, left-right flips only for axial crops and always
with the left/right condition swapped, seeded, and the GPU (grid_sample) and CPU (OpenCV) paths agreeing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lsdc import schema
from lsdc.augment import BatchAugment, draw, lr_flip_condition, warp_cv2, warp_torch
from lsdc.experiment import COND_INDEX
from lsdc.train.config import TrainConfig

CPU = torch.device("cpu")
STILL = TrainConfig(augment=True, scale=(1.0, 1.0), translate_px=0, rotate_deg=0.0, vflip=0.0, lr_flip=0.0)


def _left_bright(n: int, size: int = 32) -> np.ndarray:
    img = np.zeros((n, size, size, 3), np.uint8)
    img[:, :, : size // 4] = 255                         # bright on the image's left only
    return img


def test_lr_flip_condition_swaps_only_subarticular_sides():
    left, right = (COND_INDEX[schema.condition_for("subarticular", s)] for s in ("left", "right"))
    assert lr_flip_condition(left) == right and lr_flip_condition(right) == left
    for group, side in (("spinal", None), ("foraminal", "left"), ("foraminal", "right")):
        c = COND_INDEX[schema.condition_for(group, side)]
        assert lr_flip_condition(c) == c


def test_left_right_flips_only_axial_crops_and_swap_their_side():
    cond = np.arange(len(schema.CONDITIONS))
    out, new = BatchAugment(dataclasses.replace(STILL, lr_flip=1.0), 32, seed=0)(_left_bright(5), cond, CPU)
    for i, c in enumerate(schema.CONDITIONS):
        flipped = out[i, 0, :, -1].mean() > out[i, 0, :, 0].mean()
        if schema.CONDITION_INFO[c].group == "subarticular":
            assert flipped and new[i] == lr_flip_condition(i) != i
        else:   # sagittal crops: never flipped left-right, label kept
            assert not flipped and new[i] == i
    out, new = BatchAugment(dataclasses.replace(STILL, vflip=1.0), 32, seed=0)(_left_bright(5), cond, CPU)
    assert (new == cond).all() and (out[:, 0, :, 0].mean(1) > out[:, 0, :, -1].mean(1)).all()   # vertical only


def test_augmentation_is_seeded():
    x, cond = _left_bright(6) // 2 + np.random.default_rng(0).integers(0, 100, (6, 32, 32, 3), dtype=np.uint8), \
        np.arange(6) % 5
    a, b, c = (BatchAugment(TrainConfig(lr_flip=0.5), 32, seed=s)(x, cond, CPU)[0] for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_scale_is_uniform_and_within_the_papers_ranges():
    """One scale for both axes (albumentations 2 draws x and y apart unless keep_ratio is set), rotation
    within +/- rotate_deg, shift within +/- translate_px scaled to the crop size."""
    tcfg = TrainConfig(scale=(0.8, 1.2), translate_px=20, rotate_deg=15.0, vflip=0.0)
    d = draw(np.zeros(400, int), 64, tcfg, torch.Generator().manual_seed(0))
    fwd = np.linalg.inv(d.matrices[:, :, :2])                      # input -> output linear part
    sv = np.linalg.svd(fwd, compute_uv=False)
    assert np.allclose(sv[:, 0], sv[:, 1]) and sv.min() >= 0.8 - 1e-9 and sv.max() <= 1.2 + 1e-9
    angles = np.degrees(np.arctan2(fwd[:, 1, 0], fwd[:, 0, 0]))
    assert np.abs(angles).max() <= 15 + 1e-6 and np.abs(angles).max() > 12
    centre = np.array([31.5, 31.5])
    moved = np.einsum("nij,nj->ni", fwd, centre - d.matrices[:, :, 2]) - centre   # where the centre goes
    assert np.abs(moved).max() <= 20 * 64 / 224 + 1e-6


def test_gpu_and_cpu_paths_give_the_same_crops():
    """grid_sample (run here on the CPU) and OpenCV apply the same maps: one grey level apart on average."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :48]
    base = (128 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)
    x = np.stack([np.stack([base, base[::-1], base.T], -1)] * 8) + rng.integers(0, 3, (8, 48, 48, 3), dtype=np.uint8)
    d = draw(np.arange(8) % 5, 48, TrainConfig(lr_flip=0.5), torch.Generator().manual_seed(5))
    a = warp_cv2(x, d).astype(np.float32)
    b = warp_torch(torch.from_numpy(x).permute(0, 3, 1, 2).float(), d).permute(0, 2, 3, 1).numpy()
    inner = (slice(None), slice(8, -8), slice(8, -8))              # away from the borders' zero padding
    assert np.abs(a - b)[inner].mean() < 1.0 and np.abs(a - b)[inner].max() < 12
    assert np.abs(a - x).mean() > 10                                # and the crops did move


@pytest.mark.parametrize("channels", [1, 5])
def test_any_number_of_slices(channels: int):
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, channels), dtype=np.uint8)
    out, _ = BatchAugment(TrainConfig(), 32, seed=0)(x, np.zeros(3, int), CPU)
    assert out.shape == (3, channels, 32, 32)
