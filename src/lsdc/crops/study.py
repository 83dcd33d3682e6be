"""One study's crops: every requested point, each series read once and only the slices needed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsdc import schema
from lsdc.crops.config import CropConfig
from lsdc.crops.roi import crop_roi, is_valid_crop, save_crop, series_window
from lsdc.dicom import Series, load_series
from lsdc.errors import DataError

log = logging.getLogger(__name__)

@dataclass
class CropRequest:
    """A point to crop: which series/instance and the pixel on it."""

    condition: str
    level: str
    series_id: int
    instance_number: int
    x: float
    y: float
    label: str = ""


def crop_study(study_dir: Path, requests: list[CropRequest], cfg: CropConfig, out_dir: Path | None,
               skip_existing: bool = True, series_cache: dict[int, Series] | None = None,
               failures: list[dict[str, str]] | None = None,
               ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """Crop every request of one study, reading each series once and only the slices needed (those of
    the crops and of the series' intensity window).

    Returns index rows (with the PNG path when ``out_dir`` is given) and, when it is not, the crops
    in memory keyed by (condition, level). A request that fails (missing series, unknown instance, an
    unreadable slice) is logged with the study and skipped, and appended to ``failures`` when given
    (condition, level, error). ``series_cache`` holds series already loaded (at inference, by the
    localiser), so their headers are not read twice.
    """
    rows: list[dict[str, Any]] = []
    arrays: dict[tuple[str, str], np.ndarray] = {}
    study_id = int(study_dir.name)
    by_series: dict[int, list[CropRequest]] = {}
    for r in requests:
        by_series.setdefault(int(r.series_id), []).append(r)
    for series_id, reqs in by_series.items():
        todo = []
        for r in reqs:
            path = None if out_dir is None else out_dir / str(study_id) / crop_name(r.condition, r.level)
            if path is not None and skip_existing and is_valid_crop(path, cfg):
                rows.append(index_row(study_id, r, path))
            else:
                todo.append((r, path))
        if not todo:
            continue
        try:
            series = (series_cache or {}).get(series_id) or load_series(
                study_dir / str(series_id), study_id=study_id, series_id=series_id)
            window = series_window(series, cfg.low_pct, cfg.high_pct)
        except DataError as exc:
            log.warning("study %s: skipping %d crop(s) of series %s: %s", study_id, len(todo), series_id, exc)
            if failures is not None:
                failures.extend({"condition": r.condition, "level": r.level, "error": str(exc)} for r, _ in todo)
            continue
        for r, path in todo:
            try:   # this point only (unknown instance, a neighbour slice's pixels unreadable): the others are cut
                index = series.index_of_instance(r.instance_number)
                crop = crop_roi(series, index, r.x, r.y, cfg.mm(r.condition), cfg, window)
            except DataError as exc:
                log.warning("study %s: no %s %s crop: %s", study_id, r.condition, r.level, exc)
                if failures is not None:
                    failures.append({"condition": r.condition, "level": r.level, "error": str(exc)})
                continue
            if path is None:
                arrays[(r.condition, r.level)] = crop
            else:
                save_crop(path, crop)
                rows.append(index_row(study_id, r, path))
        if series_cache is None:
            series.clear_cache()
    return rows, arrays


def crop_name(condition: str, level: str) -> str:
    return f"{schema.label_column(condition, level)}.png"


def index_row(study_id: int, r: CropRequest, path: Path | None) -> dict[str, Any]:
    return {"study_id": study_id, "condition": r.condition, "level": r.level, "label": r.label,
            "series_id": int(r.series_id), "instance_number": int(r.instance_number), "x": r.x, "y": r.y,
            "path": "" if path is None else str(path)}


def study_task(args: tuple[Path, list[CropRequest], CropConfig, Path]) -> tuple[int, list[dict], list[dict]]:
    """One study's crops and its failures (the whole study's, with empty condition and level, or per cell)."""
    study_dir, requests, cfg, out_dir = args
    failures: list[dict[str, str]] = []
    try:
        rows, _ = crop_study(study_dir, requests, cfg, out_dir, failures=failures)
        return int(study_dir.name), rows, failures
    except Exception as exc:  # one bad study never stops the run
        return int(study_dir.name), [], [{"condition": "", "level": "", "error": f"{type(exc).__name__}: {exc}"}]
