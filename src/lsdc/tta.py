"""Test-time augmentation: named views of a crop batch, each averaged with the crops as they are.

A view says how it transforms the network's input batch (N, C, H, W) and which condition the model is asked
on the transformed crop; that answer is read back as the crop's own condition (the three severity classes
mean the same on both sides). A view applies to some condition groups only: each crop's prediction is the
mean softmax over the identity (always there) and the views that apply to it, so a view never shows a
model an image it cannot read as one of its conditions.

- ``vflip``: upside down (``dims=[2]``), every group, conditions unchanged: what training's ``train.vflip``
  shows every crop.
- ``lrflip``: left-right (``dims=[3]``), subarticular (axial) crops only, asked and read as the other side's
  recess. Axial images put the patient's left at the larger x (:mod:`lsdc.sides`), so a left recess flipped
  looks like a right one: the model's right-recess answer on the flipped crop is a second opinion on the
  left recess, the swap training's ``train.lr_flip`` makes (:data:`lsdc.augment.LR_SWAP`). Sagittal crops
  (spinal and foraminal) are skipped, as training's lr_flip never flips them: flipped left-right they show
  front and back swapped, not the other side (a foramen's mirror is its neighbour slices reversed, not an
  image flip). Side-agnostic models (``train.side_agnostic``) are skipped too: they see every recess
  mirrored onto the left and never train their right-recess head, which lrflip would ask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lsdc import schema
from lsdc.augment import LR_SWAP
from lsdc.errors import ConfigError
from lsdc.experiment import select_logits

_GROUP = np.array([schema.CONDITION_INFO[c].group for c in schema.CONDITIONS])
_SAME = np.arange(len(schema.CONDITIONS))


@dataclass(frozen=True)
class View:
    """One test-time view: ``transform`` of a float crop batch (N, C, H, W); ``asks`` maps a crop's condition
    index to the condition whose head is asked on the transformed crop (its answer belongs to the crop's own
    condition); ``groups`` are the condition groups it applies to, and ``side_agnostic`` whether it applies
    to side-agnostic models' crops at all."""

    name: str
    transform: Callable[[torch.Tensor], torch.Tensor]
    asks: np.ndarray                    # (n conditions,) condition index -> the condition asked and read as
    groups: frozenset[str]
    side_agnostic: bool = True

    def applies(self, cond: np.ndarray, side_agnostic: bool) -> np.ndarray:
        """(N,) bool: the crops of conditions ``cond`` (as the model sees them) this view is averaged into."""
        return np.isin(_GROUP[np.asarray(cond)], list(self.groups)) & (self.side_agnostic or not side_agnostic)


def _upside_down(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[2])


def _left_right(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[3])


VFLIP = View("vflip", _upside_down, _SAME, frozenset(schema.GROUPS))
LRFLIP = View("lrflip", _left_right, LR_SWAP, frozenset({"subarticular"}), side_agnostic=False)
VIEWS: dict[str, View] = {v.name: v for v in (VFLIP, LRFLIP)}
LEGACY = {False: [], True: [VFLIP.name]}   # predict.tta before views had names: true was the vertical flip


def view_names(setting: bool | Sequence[str]) -> list[str]:
    """``predict.tta`` as a list of view names (an old config's ``true``/``false`` read as ``[vflip]``/``[]``);
    ConfigError naming an unknown or repeated view and the known ones."""
    if isinstance(setting, bool):
        return list(LEGACY[setting])
    names = list(setting)
    for name in names:
        if name not in VIEWS:
            raise ConfigError(f"config key 'tta': unknown test-time view {name!r} (known views: "
                              f"{', '.join(VIEWS)}; the crops as they are are always included)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"config key 'tta': view {repeated[0]!r} is listed twice (it would count double)")
    return names


def stamp_value(names: Sequence[str]) -> bool | list[str]:
    """``predict.tta`` as an output's stamp records it: ``false``/``true`` for no views/``[vflip]``, as stamps
    wrote it before views had names, so the outputs made then stay current."""
    for old, same in LEGACY.items():
        if list(names) == same:
            return old
    return list(names)


def _probs(model: nn.Module, x: torch.Tensor, cond: torch.Tensor, device: torch.device, batch_size: int
           ) -> torch.Tensor:
    """(N, 3) softmax of each crop's condition ``cond`` (N,), in batches on ``device``."""
    out = torch.empty(len(cond), 3)
    for s in range(0, len(cond), batch_size):
        logits = model(x[s:s + batch_size].to(device)).float().cpu()
        out[s:s + batch_size] = torch.softmax(select_logits(logits, cond[s:s + batch_size], 3), 1)
    return out


def predict_views(model: nn.Module, x: torch.Tensor, cond: np.ndarray, views: Sequence[View], side_agnostic: bool,
                  device: torch.device, batch_size: int) -> torch.Tensor:
    """(N, 3): per crop of the input batch ``x`` (N, C, H, W) with conditions ``cond`` (N,), the mean softmax of
    its condition over the crop itself and each view that applies to it (asked as the view's condition)."""
    cond = np.asarray(cond)
    total = _probs(model, x, torch.from_numpy(cond), device, batch_size)
    count = torch.ones(len(cond))
    for v in views:
        keep = np.flatnonzero(v.applies(cond, side_agnostic))
        if len(keep) == 0:
            continue
        idx = torch.from_numpy(keep)
        total[idx] += _probs(model, v.transform(x[idx]), torch.from_numpy(v.asks[cond[keep]]), device, batch_size)
        count[idx] += 1
    return total / count[:, None]
