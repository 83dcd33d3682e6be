"""One classifier for both sides: a right foramen or recess crop mirrored onto the left, with its condition.

The 3rd place solution trained one side-agnostic classifier (the right side flipped onto the left) and called
it a data multiplier. The mirror follows each crop's geometry:

- subarticular (axial) crops: a left-right flip of the image. Axial images put the patient's left at the
  larger x (radiological convention; the localiser and the crops keep it), so the flip turns a right recess
  into a left one, exactly as ``train.lr_flip`` does.
- foraminal (sagittal) crops: the image is not flipped (that would swap front and back); the neighbour slices
  are reversed. :class:`lsdc.dicom.Series` orders every series' slices by position along a normal whose
  largest component is positive, which for a sagittal series is the patient's left (+x in LPS): channel 0 is
  always the slice towards the patient's right, the last the one towards the left, whatever order the scanner
  numbered them in. Reversing the channels puts a right foramen's lateral side where a left one's is.
  With a single slice per crop (``crops.n_slices=1``) a foraminal crop has nothing to mirror and stays as it
  is, its condition mapped all the same.

Spinal crops pass through. The model then has only left-side heads in use; its output for a mirrored crop is
that crop's own (right) row, so the swap back at prediction is the row the crop came from.
"""

from __future__ import annotations

import numpy as np

from lsdc import schema
from lsdc.experiment import COND_INDEX

_GROUP = np.array([schema.CONDITION_INFO[c].group for c in schema.CONDITIONS])
_RIGHT = np.array([schema.CONDITION_INFO[c].side == "right" for c in schema.CONDITIONS])
# Condition index a crop is classified under once mirrored: right foraminal/subarticular -> left, else itself.
TO_LEFT = np.array([COND_INDEX[schema.condition_for(str(g), "left")] if r else i
                    for i, (g, r) in enumerate(zip(_GROUP, _RIGHT, strict=True))])


def mirror_sides(crops: np.ndarray, cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops (B, H, W, C) and condition indices (B,) -> the same with every right foramen or recess
    mirrored onto the left (a new array; the input is not changed) and its condition the left one."""
    cond = np.asarray(cond)
    out = np.array(crops, copy=True)
    recess = _RIGHT[cond] & (_GROUP[cond] == "subarticular")
    foramen = _RIGHT[cond] & (_GROUP[cond] == "foraminal")
    out[recess] = out[recess][:, :, ::-1]
    out[foramen] = out[foramen][..., ::-1]
    return out, TO_LEFT[cond]
