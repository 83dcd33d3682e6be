"""The training set's crops: the labeled cells at annotated (or held-out localised) points, cut in parallel,
resumable, indexed, packed into one array and shown on a contact sheet."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.crops.config import CropConfig
from lsdc.crops.roi import load_crop
from lsdc.crops.study import CropRequest, study_task
from lsdc.data import images_dir, load_coordinates, load_train_labels
from lsdc.errors import DataError
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
            collected = list(progress(pool.map(study_task, tasks, chunksize=1), "crops", len(tasks),
                                      enabled=show_progress))
    else:
        collected = list(progress(map(study_task, tasks), "crops", len(tasks), enabled=show_progress))
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
