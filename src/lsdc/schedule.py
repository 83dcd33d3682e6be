"""Learning-rate schedules as pure functions of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine"]


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: Schedule) -> float:
    """The learning rate's multiplier before optimiser step ``step`` (0-based) of ``total_steps``.

    ``constant``: 1. ``cosine``: linear warmup from 1/warmup_steps to 1 over the first ``warmup_steps``
    steps, then half a cosine from 1 down to 0 at the last step.
    """
    if kind == "constant":
        return 1.0
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / decay)))
