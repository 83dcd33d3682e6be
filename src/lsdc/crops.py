"""ROI crops: one image per (study, condition, level), centred on its point, of a fixed size in mm.

The very same :func:`crop_roi` makes the training crops (from annotated coordinates) and the test
crops (from localised points), so a model never sees a crop made differently at inference.
A crop has ``n_slices`` channels: the slice the point lies on and its neighbours along the slice
normal. Neighbours are found through patient space (the point is projected onto each neighbour), so
slices of other shapes or oblique blocks in the same series are handled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.data import images_dir, load_coordinates, load_train_labels
from lsdc.dicom import Series, load_series
from lsdc.errors import ConfigError, DataError
from lsdc.geometry import patient_to_pixel
from lsdc.io import atomic_path, read_csv_checked, write_csv, write_json
from lsdc.progress import progress
from lsdc.stamps import file_state, is_current, is_stale, stamp_path, tree_state, write_stamp

log = logging.getLogger(__name__)

INDEX_CSV = "index.csv"
ERRORS_CSV = "errors.csv"
ERROR_COLUMNS = ("study_id", "condition", "level", "error")   # condition and level empty: the whole study
CONTACT_SHEET = "contact_sheet.png"
ARRAY_NPY = "crops.npy"   # every crop of index.csv, in its row order, as one uint8 array (training reads it)
SETTINGS_JSON = "settings.json"
INDEX_COLUMNS = ("study_id", "condition", "level", "label", "series_id", "instance_number", "x", "y", "path")


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


# ----------------------------------------------------------------------------- the crop itself


def intensity_window(images: list[np.ndarray], low_pct: float, high_pct: float) -> tuple[float, float]:
    """Robust (low, high) intensity of a series, from the whole slices that were read.

    Every 4th pixel of every 4th row is plenty for two percentiles (thousands of values per slice)
    and makes the window cost less than the crops.
    """
    values = np.concatenate([np.asarray(im, dtype=np.float32)[::4, ::4].ravel() for im in images])
    lo, hi = np.percentile(values, [low_pct, high_pct])
    return float(lo), float(max(hi, lo + 1e-3))


def window_slices(n_total: int) -> list[int]:
    """The slices a series' intensity window is taken from: up to WINDOW_SLICES, evenly spaced."""
    return sorted(set(np.linspace(0, n_total - 1, min(n_total, WINDOW_SLICES)).round().astype(int).tolist()))


def series_window(series: Series, low_pct: float, high_pct: float) -> tuple[float, float]:
    """The robust intensity window of a series, from its :func:`window_slices` alone: every crop of a
    series gets the same window whichever cells are cut with it (training, a resumed run, a test study)."""
    return intensity_window(series.images(window_slices(len(series))), low_pct, high_pct)


def neighbour_indices(centre: int, n_slices: int, n_total: int) -> list[int]:
    """Slice indices centre-k .. centre+k, repeating the edge slice where the series ends."""
    k = n_slices // 2
    return [min(max(centre + d, 0), n_total - 1) for d in range(-k, k + 1)]


def resample_patch(image: np.ndarray, x: float, y: float, size_mm: float, spacing: tuple[float, float],
                   out: int) -> np.ndarray:
    """A square of ``size_mm`` centred on pixel (x, y), resampled bilinearly to ``out`` x ``out``.

    Outside the image is 0. ``spacing`` is (row, column) mm per pixel of ``image``. Where the square is
    shrunk (more than one input pixel per output pixel, e.g. the localiser's 180 mm region at 96 px from real
    0.5 mm pixels) the region is first low-pass filtered (Gaussian, sigma (factor - 1) / 2 per axis, as
    scikit-image's anti-aliasing): bilinear sampling alone would alias the noise of fine pixels.
    """
    sx = size_mm / out / spacing[1]  # input pixels per output pixel, along x
    sy = size_mm / out / spacing[0]
    c = (out - 1) / 2
    image = np.ascontiguousarray(image, dtype=np.float32)
    if max(sx, sy) > 1:
        sigma_x, sigma_y = max(0.0, (sx - 1) / 2), max(0.0, (sy - 1) / 2)
        rx, ry = (c + 1) * sx + 3 * sigma_x + 2, (c + 1) * sy + 3 * sigma_y + 2   # what the square reads
        x0, x1 = max(0, int(np.floor(x - rx))), min(image.shape[1], int(np.ceil(x + rx)) + 1)
        y0, y1 = max(0, int(np.floor(y - ry))), min(image.shape[0], int(np.ceil(y + ry)) + 1)
        if x0 < x1 and y0 < y1:
            image = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), sigmaX=max(sigma_x, 1e-3),
                                     sigmaY=max(sigma_y, 1e-3), borderType=cv2.BORDER_REFLECT)
            x, y = x - x0, y - y0
    m = np.array([[sx, 0, x - c * sx], [0, sy, y - c * sy]], dtype=np.float64)
    return cv2.warpAffine(image, m, (out, out),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def crop_roi(series: Series, index: int, x: float, y: float, size_mm: float, cfg: CropConfig,
             window: tuple[float, float]) -> np.ndarray:
    """The ROI crop of a point: uint8 (size, size, n_slices), slice ``index`` in the middle channel.

    (x, y) is the point's pixel on slice ``index``; each neighbour gets the same patient point projected
    onto its own plane.
    """
    point = series.pixel_to_patient(index, x, y)
    lo, hi = window
    scale = 255.0 / (hi - lo)
    channels = []
    for j in neighbour_indices(index, cfg.n_slices, len(series)):
        g = series.slices[j].geometry
        if j == index:
            xj, yj = x, y
        else:
            px, py, _ = patient_to_pixel(g, point)
            xj, yj = float(px), float(py)
        patch = resample_patch(series.image(j), xj, yj, size_mm, g.spacing, cfg.size)
        # (patch - lo) * 255 / (hi - lo), rounded and saturated to 0..255 in one OpenCV call.
        channels.append(cv2.addWeighted(patch, scale, patch, 0.0, -lo * scale, dtype=cv2.CV_8U))
    return cv2.merge(channels) if len(channels) > 1 else channels[0][..., None]


def save_crop(path: Path, crop: np.ndarray) -> None:
    """PNG, atomically: grey for 1 slice, 3 channels for 3, a horizontal strip for 5."""
    h, w, n = crop.shape
    img = crop[..., 0] if n == 1 else crop if n == 3 else crop.transpose(0, 2, 1).reshape(h, n * w)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise DataError(f"could not write {path}")


def load_crop(path: str | Path, n_slices: int) -> np.ndarray:
    """Inverse of :func:`save_crop`: uint8 (size, size, n_slices)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"crop {path} is missing or not a readable PNG")
    if n_slices == 1:
        return img[..., None] if img.ndim == 2 else img[..., :1]
    if n_slices == 3:
        if img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"crop {path} does not have 3 channels")
        return img
    h, w5 = img.shape[:2]
    return img.reshape(h, n_slices, w5 // n_slices).transpose(0, 2, 1)


def _valid(path: Path, cfg: CropConfig) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        return load_crop(path, cfg.n_slices).shape == (cfg.size, cfg.size, cfg.n_slices)
    except (DataError, ValueError):
        return False


# ----------------------------------------------------------------------------- one study


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
            if path is not None and skip_existing and _valid(path, cfg):
                rows.append(_row(study_id, r, path))
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
                rows.append(_row(study_id, r, path))
        if series_cache is None:
            series.clear_cache()
    return rows, arrays


def crop_name(condition: str, level: str) -> str:
    return f"{schema.label_column(condition, level)}.png"


def _row(study_id: int, r: CropRequest, path: Path | None) -> dict[str, Any]:
    return {"study_id": study_id, "condition": r.condition, "level": r.level, "label": r.label,
            "series_id": int(r.series_id), "instance_number": int(r.instance_number), "x": r.x, "y": r.y,
            "path": "" if path is None else str(path)}


def _study_task(args: tuple[Path, list[CropRequest], CropConfig, Path]) -> tuple[int, list[dict], list[dict]]:
    """One study's crops and its failures (the whole study's, with empty condition and level, or per cell)."""
    study_dir, requests, cfg, out_dir = args
    failures: list[dict[str, str]] = []
    try:
        rows, _ = crop_study(study_dir, requests, cfg, out_dir, failures=failures)
        return int(study_dir.name), rows, failures
    except Exception as exc:  # one bad study never stops the run
        return int(study_dir.name), [], [{"condition": "", "level": "", "error": f"{type(exc).__name__}: {exc}"}]


# ----------------------------------------------------------------------------- the training set


def training_requests(data_dir: Path) -> dict[int, list[CropRequest]]:
    """Labeled (study, condition, level) cells that have a coordinate, grouped by study."""
    return _labeled_requests(data_dir, load_coordinates(data_dir), schema.COORDS_CSV)


def localized_requests(data_dir: Path, points_csv: Path) -> dict[int, list[CropRequest]]:
    """Labeled cells at the points a localiser placed held out (its ``oof_points.csv``), grouped by study:
    the crops a test study gets, for training that expects the localiser's errors."""
    points = read_csv_checked(points_csv, ("study_id", "condition", "level", "series_id", "instance_number", "x", "y"),
                              "train the localiser first (scripts/03_train_localizer.py)")
    return _labeled_requests(data_dir, points.dropna(subset=["series_id"]), None)


def _labeled_requests(data_dir: Path, points: pd.DataFrame, warn_source: str | None) -> dict[int, list[CropRequest]]:
    """The points of labeled cells as crop requests by study; a study without a train.csv row is skipped
    (with a warning naming ``warn_source`` when given)."""
    train = load_train_labels(data_dir).set_index("study_id")
    out: dict[int, list[CropRequest]] = {}
    for r in points.itertuples(index=False):
        if r.study_id not in train.index:
            if warn_source:
                log.warning("%s: study %s has coordinates but no train.csv row; skipped", warn_source, r.study_id)
            continue
        label = train.at[r.study_id, schema.label_column(r.condition, r.level)]
        if pd.isna(label):
            continue
        out.setdefault(int(r.study_id), []).append(
            CropRequest(r.condition, r.level, int(r.series_id), int(r.instance_number), float(r.x), float(r.y),
                        str(label)))
    return out


def crops_dirname(cfg: CropConfig, points_csv: Path | None = None) -> str:
    """The crop folder of a setting: at annotated points, or at the points of a localiser's folder."""
    return cfg.dirname if points_csv is None else f"{cfg.dirname}_at_{Path(points_csv).parent.name}"


def prepare(data_dir: str | Path, output_dir: str | Path, cfg: CropConfig, show_progress: bool = True,
            points_csv: Path | None = None) -> Path:
    """Write the training crops, their index and a contact sheet; returns the crops folder.

    Crops are cut at the annotated points, or, with ``points_csv`` (a localiser's ``oof_points.csv``), at
    the points the localiser placed held out. Studies run in parallel; crops already written and valid are
    kept (a rerun resumes); a study that fails is reported in ``errors.csv`` and the log, and the run goes
    on. When the labels, points, images and settings are those the finished index was made from, nothing
    is redone.
    """
    cfg.check()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    crops_dir = output_dir / crops_dirname(cfg, points_csv)
    inputs = {"settings": cfg.pixel_settings(), "labels": file_state(data_dir / schema.TRAIN_CSV),
              "coordinates": file_state(data_dir / schema.COORDS_CSV if points_csv is None else points_csv),
              "images": tree_state(images_dir(data_dir, "train"))}
    if is_current(crops_dir / INDEX_CSV, inputs) and _all_written(crops_dir):
        log.info("crops in %s are up to date", crops_dir)
        return crops_dir
    if is_stale(crops_dir / INDEX_CSV, inputs):
        log.info("%s was cut from other labels, points or images: cutting every crop again", crops_dir)
        for study in (d for d in crops_dir.iterdir() if d.is_dir()):
            shutil.rmtree(study)
        stamp_path(crops_dir / INDEX_CSV).unlink()
    requests = training_requests(data_dir) if points_csv is None else localized_requests(data_dir, points_csv)
    images = images_dir(data_dir, "train")
    write_json(crops_dir / SETTINGS_JSON, cfg.pixel_settings())
    tasks = [(images / str(sid), reqs, cfg, crops_dir) for sid, reqs in sorted(requests.items())]
    log.info("cropping %d cells of %d studies into %s", sum(len(t[1]) for t in tasks), len(tasks), crops_dir)
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    if cfg.workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            collected = list(progress(pool.map(_study_task, tasks, chunksize=1), "crops", len(tasks),
                                      enabled=show_progress))
    else:
        collected = list(progress(map(_study_task, tasks), "crops", len(tasks), enabled=show_progress))
    for study_id, study_rows, failed in collected:
        rows.extend(study_rows)
        for f in failed:
            if not f["condition"]:
                log.warning("study %s failed and was skipped: %s", study_id, f["error"])
            errors.append({"study_id": study_id, **f})
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    index["path"] = [str(Path(p).relative_to(crops_dir)) if p else "" for p in index.path]
    write_csv(index, crops_dir / INDEX_CSV)
    errors_t = pd.DataFrame(errors, columns=list(ERROR_COLUMNS))
    write_csv(errors_t, crops_dir / ERRORS_CSV)
    n_cells = sum(len(r) for r in requests.values())
    whole = errors_t.condition.eq("")
    log.info("%d crops written or kept (%d requested); %d studies failed whole, %d more cells of %d studies "
             "failed (%s)", len(index), n_cells, int(whole.sum()), int((~whole).sum()),
             errors_t.study_id[~whole].nunique(), crops_dir / ERRORS_CSV)
    if len(index):
        contact_sheet(index, crops_dir, cfg)
    build_array(crops_dir, cfg)
    write_stamp(crops_dir / INDEX_CSV, inputs)
    return crops_dir


def _all_written(crops_dir: Path) -> bool:
    """Whether every crop of the index is on disk and in the array (not decoded: a finished index is
    trusted)."""
    index = pd.read_csv(crops_dir / INDEX_CSV, usecols=["path"], keep_default_na=False)
    array = crops_dir / ARRAY_NPY
    if not array.is_file() or np.load(array, mmap_mode="r").shape[0] != len(index):
        return False
    return all((crops_dir / p).is_file() for p in index.path if p)


def build_array(crops_dir: Path, cfg: CropConfig) -> Path:
    """``crops.npy``: every crop of the index as one uint8 (N, size, size, n_slices) array, in the index's
    row order, written once (atomically) from the PNGs, so training gathers batches from memory-mapped
    bytes instead of decoding a PNG per crop and epoch."""
    index = pd.read_csv(crops_dir / INDEX_CSV, usecols=["path"], keep_default_na=False)
    path = crops_dir / ARRAY_NPY
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(index), cfg.size, cfg.size, cfg.n_slices))
        for i, rel in enumerate(index.path):
            out[i] = load_crop(crops_dir / rel, cfg.n_slices)
        out.flush()
        del out
    return path


def load_array(crops_dir: Path) -> np.ndarray:
    """The crop folder's ``crops.npy``, memory-mapped read-only; DataError when missing or out of step with
    the index (cut the crops again: scripts/01_prepare_crops.py)."""
    path = crops_dir / ARRAY_NPY
    n = len(pd.read_csv(crops_dir / INDEX_CSV, usecols=["path"]))
    if not path.is_file():
        raise DataError(f"{path} not found: run scripts/01_prepare_crops.py with the same crops settings")
    array = np.load(path, mmap_mode="r")
    if array.shape[0] != n:
        raise DataError(f"{path} holds {array.shape[0]} crops, {crops_dir / INDEX_CSV} {n}: cut the crops again")
    return array


def contact_sheet(index: pd.DataFrame, crops_dir: Path, cfg: CropConfig, tile: int = 96) -> Path:
    """A PNG grid of sample crops: one row per condition, columns grouped by severity (middle slice)."""
    per = cfg.contact_per_cell
    label_w = 150
    sheet = np.full((len(schema.CONDITIONS) * (tile + 4) + 24, label_w + 3 * per * (tile + 2) + 3 * 8, 3),
                    32, np.uint8)
    for si, sev in enumerate(schema.SEVERITIES):
        x0 = label_w + si * (per * (tile + 2) + 8)
        cv2.putText(sheet, sev, (x0, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    for ci, cond in enumerate(schema.CONDITIONS):
        y0 = 24 + ci * (tile + 4)
        cv2.putText(sheet, cond.replace("Neural Foraminal", "Foraminal"), (4, y0 + tile // 2),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
        for si, sev in enumerate(schema.SEVERITIES):
            sel = index[(index.condition == cond) & (index.label == sev)].head(per)
            for k, rel in enumerate(sel.path):
                crop = load_crop(crops_dir / rel, cfg.n_slices)[..., cfg.n_slices // 2]
                x0 = label_w + si * (per * (tile + 2) + 8) + k * (tile + 2)
                sheet[y0:y0 + tile, x0:x0 + tile] = cv2.resize(crop, (tile, tile))[..., None]
    path = crops_dir / CONTACT_SHEET
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), sheet)
    return path
