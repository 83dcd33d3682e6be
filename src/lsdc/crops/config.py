"""How a crop is cut: its size in pixels and in mm per condition group, its slices and its intensity window."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lsdc import schema
from lsdc.errors import ConfigError

CROP_VERSION = 3    # 2: the intensity window depends on the series alone; 3: shrunk patches low-pass filtered
WINDOW_SLICES = 5   # slices per series the intensity window is computed from
PIXEL_SETTINGS = ("size", "n_slices", "low_pct", "high_pct")   # with each group's side in mm
DEFAULT_SIZE_MM = {"spinal": 48.0, "foraminal": 40.0, "subarticular": 44.0}


@dataclass
class CropConfig:
    """How ROI crops are cut; training and inference share it (it is saved with every model)."""

    size: int = 224                  # output side in pixels (bilinear resampling)
    n_slices: int = 3                # channels: the slice and its neighbours (1, 3 or 5)
    # Physical side of the crop per condition group (`--set crops.size_mm.spinal=40` changes one).
    size_mm: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SIZE_MM))
    low_pct: float = 1.0             # robust intensity window per series
    high_pct: float = 99.5
    workers: int = 2
    contact_per_cell: int = 4        # crops per condition x severity on the contact sheet

    @staticmethod
    def legacy_keys(data: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before ``size_mm`` held one key per group (``spinal_mm: 48.0``): read them as it."""
        old = {g: data.pop(f"{g}_mm") for g in schema.GROUPS if f"{g}_mm" in data}
        if old:
            data["size_mm"] = {**DEFAULT_SIZE_MM, **data.get("size_mm", {}), **old}
        return data

    def mm(self, condition: str) -> float:
        return float(self.size_mm[schema.CONDITION_INFO[condition].group])

    def pixel_settings(self) -> dict[str, float]:
        """Every setting that changes a crop's pixels (not the worker count or the contact sheet), and the
        version of the crop code, so that crops cut by older code are never reused."""
        # Each group's side keeps the key it had as a field of its own, so crop folders cut before keep their name.
        return {"version": CROP_VERSION, **{k: getattr(self, k) for k in PIXEL_SETTINGS},
                **{f"{g}_mm": float(self.size_mm[g]) for g in schema.GROUPS}}

    @property
    def dirname(self) -> str:
        """Crops of different settings live side by side (e.g. smoke 64 px and paper 224 px); the name
        carries a digest of every pixel setting, so changing the size in mm or the window never reuses
        crops cut with the old value."""
        digest = hashlib.sha1(json.dumps(self.pixel_settings(), sort_keys=True).encode()).hexdigest()[:8]
        return f"crops_{self.size}px_{self.n_slices}sl_{digest}"

    def check(self) -> None:
        if sorted(self.size_mm) != sorted(schema.GROUPS):
            raise ConfigError(f"config key 'crops.size_mm' must give a side for each of {', '.join(schema.GROUPS)}, "
                              f"got {', '.join(self.size_mm) or 'none'}")
        if any(v <= 0 for v in self.size_mm.values()):
            raise ConfigError(f"config key 'crops.size_mm': every side must be positive, got {self.size_mm}")
        if self.n_slices not in (1, 3, 5):
            raise ConfigError(f"config key 'crops.n_slices' must be 1, 3 or 5, got {self.n_slices}")
        if self.size < 16:
            raise ConfigError(f"config key 'crops.size' must be at least 16, got {self.size}")
        if not 0 <= self.low_pct < self.high_pct <= 100:
            raise ConfigError("config keys 'crops.low_pct' < 'crops.high_pct' must lie in [0, 100]")
