"""Test-time localisation: where each (condition, level) sits when no coordinates are given.

Two stages, trained from train_label_coordinates.csv with the shared folds:
1. A small heatmap CNN finds the five spinal-canal level points on the mid-sagittal slice (Sagittal
   T2/STIR, or Sagittal T1 when T2 is missing: it is trained on both, with the canal points projected
   onto each series through the DICOM geometry).
2. Foramen and subarticular points are the canal point of the level plus an offset learned in patient
   space (median over training studies, per condition and level), projected into the Sagittal T1 series
   and into every Axial T2 series: the nearest slice whose image contains the point, within a tolerance.
3. Each foramen's and recess's slice is then chosen by a small slice scorer per condition group (the
   canal too if ``slice_groups`` says so): the slices of the
   target series within ``slice_window_mm`` of the point compete (softmax over the candidates), each
   seen as a patch around the point with its two neighbours. The canal's left-right position comes from
   one slice and the foramina lie about 20 mm to either side, and the level heights carry a few mm of
   error into the axial stacks, so the nearest slice is a neighbour of the annotated one about half the
   time; the scorer looks at the anatomy instead.

The output is a list of :class:`lsdc.crops.CropRequest`, cropped by the very code that made the
training crops.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import CropRequest, neighbour_indices, resample_patch, series_window
from lsdc.data import images_dir, load_coordinates, load_series_descriptions, load_study_series
from lsdc.dicom import Series, read_header
from lsdc.errors import ConfigError, DataError
from lsdc.experiment import CONFIG_YAML, METRICS_JSON, FoldConfig, resolve_device
from lsdc.folds import folds_csv, load_folds
from lsdc.geometry import inside_image, patient_to_pixel, pixel_to_patient
from lsdc.io import atomic_path, write_csv, write_json
from lsdc.models import KeypointNet, SliceScorer
from lsdc.stamps import file_state, is_current, tree_state, write_stamp

log = logging.getLogger(__name__)
SPINAL = schema.condition_for("spinal")
LOCALIZER_PT = "localizer.pt"
OOF_POINTS_CSV = "oof_points.csv"
WINDOW_PCT = (1.0, 99.5)   # the localiser's inputs are windowed per series like the crops
# Per held-out annotated point: the error, and the crop request the localiser made for it (empty when it
# placed none), so that lsdc.predict.localized_oof can classify exactly these crops.
OOF_POINT_COLUMNS = ("study_id", "condition", "level", "error_mm", "slice_correct", "series_id", "instance_number",
                     "x", "y")
N_LEVELS = len(schema.LEVELS)


@dataclass
class LocalizerConfig:
    image_size: int = 256          # the sagittal slice is resized to this square
    width: int = 16                # base channels of the heatmap network
    sigma: float = 1.5             # target Gaussian, in heatmap pixels (stride 4)
    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    augment: bool = True
    axial_tolerance_mm: float = 12.0   # farther than this from every axial slice: no subarticular crop
    # Groups whose slice a learned scorer chooses. The canal is left to the nearest slice: its scorer
    # found the annotated slice far more often (0.91 against 0.50 held out) yet made the spinal test
    # rows slightly worse on two synthetic test sets, so it is opt-in.
    slice_groups: list[str] = field(default_factory=lambda: ["foraminal", "subarticular"])
    slice_window_mm: float = 10.0      # candidates: T1 slices whose plane is this close to the offset point
    slice_patch_mm: float = 40.0       # side of the patch each candidate is seen through
    slice_patch_px: int = 48
    slice_epochs: int = 25
    slice_jitter_mm: float = 4.0       # training: in-plane shift of the patch, as the offset point errs
    device: str = "auto"
    seed: int = 0


@dataclass
class LocalizerExperiment:
    """The localiser's config file: its folder name, the shared folds and its own settings."""

    name: str = "localizer"
    folds: FoldConfig = field(default_factory=FoldConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)


# ----------------------------------------------------------------------------- heatmaps


def heatmap_loss(logits: torch.Tensor, points: torch.Tensor, valid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy between the spatial softmax of each channel and a Gaussian around its point.

    ``points`` (B, K, 2) in heatmap pixels (x, y); ``valid`` (B, K) masks points that are not annotated.
    """
    b, k, h, w = logits.shape
    ys = torch.arange(h, device=logits.device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=logits.device, dtype=torch.float32)[None, :]
    d2 = (xs - points[..., 0, None, None]) ** 2 + (ys - points[..., 1, None, None]) ** 2
    target = torch.softmax((-d2 / (2 * sigma**2)).view(b, k, -1), dim=-1)
    logp = torch.log_softmax(logits.float().view(b, k, -1), dim=-1)
    per = -(target * logp).sum(-1)
    return (per * valid).sum() / valid.sum().clamp_min(1)


def decode(logits: torch.Tensor) -> np.ndarray:
    """(B, K, h, w) heatmaps -> (B, K, 2) points (x, y) in heatmap pixels: softmax-weighted mean near the peak."""
    b, k, h, w = logits.shape
    prob = torch.softmax(logits.float().view(b, k, -1), -1).view(b, k, h, w).cpu().numpy()
    out = np.zeros((b, k, 2))
    for i in range(b):
        for j in range(k):
            p = prob[i, j]
            y0, x0 = np.unravel_index(np.argmax(p), p.shape)
            ya, yb, xa, xb = max(0, y0 - 2), min(h, y0 + 3), max(0, x0 - 2), min(w, x0 + 3)
            win = p[ya:yb, xa:xb]
            gy, gx = np.mgrid[ya:yb, xa:xb]
            out[i, j] = ((gx * win).sum() / win.sum(), (gy * win).sum() / win.sum())
    return out


# ----------------------------------------------------------------------------- inputs


def middle_index(series: Series) -> int:
    return len(series) // 2


def slice_input(series: Series, index: int, size: int) -> np.ndarray:
    """Slices index-1, index, index+1 of a sagittal series, windowed and resized: float32 (3, size, size)."""
    idx = neighbour_indices(index, 3, len(series))
    lo, hi = series_window(series, *WINDOW_PCT)
    chans = [cv2.resize(np.asarray(series.image(j), np.float32), (size, size), interpolation=cv2.INTER_AREA)
             for j in idx]
    return np.clip((np.stack(chans) - lo) / (hi - lo), 0, 1).astype(np.float32)


def to_input_pixels(series: Series, index: int, points: np.ndarray, size: int) -> np.ndarray:
    """Patient points (K, 3) -> (K, 2) pixels of the resized slice ``index``."""
    g = series.slices[index].geometry
    x, y, _ = patient_to_pixel(g, points)
    return np.stack([x * size / g.cols, y * size / g.rows], -1)


def from_input_pixels(series: Series, index: int, pts: np.ndarray, size: int) -> np.ndarray:
    g = series.slices[index].geometry
    return pixel_to_patient(g, pts[:, 0] * g.cols / size, pts[:, 1] * g.rows / size)


# ----------------------------------------------------------------------------- training data


@dataclass
class StudyPoints:
    """Annotated patient-space points of one training study."""

    study_id: int
    canal: np.ndarray                                   # (5, 3), NaN where missing
    points: dict[tuple[str, str], np.ndarray]           # (condition, level) -> (3,)
    instances: dict[tuple[str, str], tuple[int, int]]   # (condition, level) -> (series_id, instance)


def annotated_points(data_dir: Path, study_ids: list[int]) -> dict[int, StudyPoints]:
    """Patient coordinates of every annotated point of the given studies (headers only)."""
    coords = load_coordinates(data_dir)
    coords = coords[coords.study_id.isin(study_ids)]
    out: dict[int, StudyPoints] = {}
    for sid, rows in coords.groupby("study_id"):
        sp = StudyPoints(int(sid), np.full((N_LEVELS, 3), np.nan), {}, {})
        for r in rows.itertuples(index=False):
            path = images_dir(data_dir, "train") / str(sid) / str(r.series_id) / f"{r.instance_number}.dcm"
            try:
                g = read_header(path).geometry
            except DataError as exc:
                log.warning("study %s: coordinate on unreadable %s skipped (%s)", sid, path.name, exc)
                continue
            p = pixel_to_patient(g, r.x, r.y)
            sp.points[(r.condition, r.level)] = p
            sp.instances[(r.condition, r.level)] = (int(r.series_id), int(r.instance_number))
            if r.condition == SPINAL:
                sp.canal[schema.LEVELS.index(r.level)] = p
        out[int(sid)] = sp
    return out


def sagittal_samples(data_dir: Path, points: dict[int, StudyPoints], series: pd.DataFrame,
                     size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(input, target pixels (5, 2), valid (5,)) from the middle T2 and T1 slice of each annotated study."""
    samples = []
    for sid, sp in points.items():
        if np.isnan(sp.canal).all():
            continue
        found = load_study_series(images_dir(data_dir, "train") / str(sid), series[series.study_id == sid])
        for desc in (schema.SAG_T2, schema.SAG_T1):
            for s in found.get(desc, [])[:1]:
                i = middle_index(s)
                valid = ~np.isnan(sp.canal).any(1)
                pix = np.zeros((N_LEVELS, 2))
                pix[valid] = to_input_pixels(s, i, sp.canal[valid], size)
                valid &= (pix >= 0).all(1) & (pix < size).all(1)
                samples.append((slice_input(s, i, size), pix, valid.astype(np.float32)))
                s.clear_cache()
    return samples


def learn_offsets(points: dict[int, StudyPoints]) -> dict[str, list[float]]:
    """Mean patient-space offset of every (condition, level) point from its level's canal point."""
    acc: dict[tuple[str, str], list[np.ndarray]] = {}
    for sp in points.values():
        for (cond, level), p in sp.points.items():
            c = sp.canal[schema.LEVELS.index(level)]
            if cond != SPINAL and not np.isnan(c).any():
                acc.setdefault((cond, level), []).append(p - c)
    return {f"{c}|{lv}": np.median(v, axis=0).tolist() for (c, lv), v in acc.items()}


def _augment(img: np.ndarray, pix: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[-1]
    ang = rng.uniform(-10, 10)
    scale = rng.uniform(0.9, 1.1)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), ang, scale)
    m[:, 2] += rng.uniform(-0.08, 0.08, 2) * size
    out = np.stack([cv2.warpAffine(c, m, (size, size), flags=cv2.INTER_LINEAR) for c in img])
    out = np.clip(out * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, out.shape).astype(np.float32), 0, 1)
    return out.astype(np.float32), pix @ m[:, :2].T + m[:, 2]


def fit_keypoints(samples: list, cfg: LocalizerConfig, device: torch.device) -> KeypointNet:
    """Train the heatmap network on (input, pixels, valid) samples."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = KeypointNet(3, N_LEVELS, cfg.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    stride = KeypointNet.stride
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(samples))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            batch = [samples[i] for i in order[start:start + cfg.batch_size]]
            xs, ps = [], []
            for img, pix, _ in batch:
                if cfg.augment:
                    img, pix = _augment(img, pix, rng)
                xs.append(img)
                ps.append(pix / stride)
            x = torch.from_numpy(np.stack(xs)).to(device)
            p = torch.from_numpy(np.stack(ps)).float().to(device)
            v = torch.from_numpy(np.stack([b[2] for b in batch])).to(device)
            loss = heatmap_loss(model(x), p, v, cfg.sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        sched.step()
        if epoch == 0 or (epoch + 1) % 10 == 0:
            log.info("localizer epoch %d: loss %.4f", epoch + 1, total / max(len(samples), 1))
    return model.eval()


# ----------------------------------------------------------------------------- slice choice


def plane_distances(series: Series, point: np.ndarray) -> np.ndarray:
    """(n,) distance in mm of a patient point from each slice's plane."""
    return np.array([abs(float(patient_to_pixel(g, point)[2])) for g in series.geometries()])


def slice_candidates(series: Series, point: np.ndarray, window_mm: float) -> list[int]:
    """Indices of the slices whose plane lies within ``window_mm`` of a patient point (the nearest one
    if none does), in slice order."""
    dist = plane_distances(series, point)
    near = np.flatnonzero(dist <= window_mm)
    return near.tolist() if len(near) else [int(np.argmin(dist))]


def slice_patches(series: Series, candidates: list[int], point: np.ndarray, cfg: LocalizerConfig,
                  window: tuple[float, float], shift: np.ndarray | None = None) -> np.ndarray:
    """float32 (C, 3, P, P): for each candidate, the patch around the point on it and its neighbours.

    ``shift`` (C, 2) moves each patch in plane by that many mm (training augmentation)."""
    lo, hi = window
    out = np.zeros((len(candidates), 3, cfg.slice_patch_px, cfg.slice_patch_px), np.float32)
    for c, i in enumerate(candidates):
        for k, j in enumerate(neighbour_indices(i, 3, len(series))):
            g = series.slices[j].geometry
            x, y, _ = patient_to_pixel(g, point)
            dx, dy = (0.0, 0.0) if shift is None else shift[c]
            patch = resample_patch(series.image(j), float(x) + dx / g.spacing[1], float(y) + dy / g.spacing[0],
                                   cfg.slice_patch_mm, g.spacing, cfg.slice_patch_px)
            out[c, k] = np.clip((patch - lo) / (hi - lo), 0, 1)
    return out


@dataclass
class SliceSample:
    """One annotated point: its series, the point the localiser would start from, the annotated slice."""

    series: Series
    point: np.ndarray
    target: int


def slice_samples(data_dir: Path, points: dict[int, StudyPoints], series: pd.DataFrame,
                  offsets: dict[str, list[float]], group: str) -> list[SliceSample]:
    """Annotated points of one condition group, each from the point the localiser would start from: the
    annotated canal point of its level, plus the learned offset outside the canal."""
    desc = schema.CONDITION_INFO[schema.condition_for(group, "left" if group != "spinal" else None)].series
    samples = []
    for sid, sp in points.items():
        rows = series[(series.study_id == sid) & (series.series_description == desc)]
        found = load_study_series(images_dir(data_dir, "train") / str(sid), rows).get(desc, [])
        by_id = {int(s.series_id): s for s in found}
        for (cond, level), (series_id, instance) in sp.instances.items():
            canal = sp.canal[schema.LEVELS.index(level)]
            off = [0.0, 0.0, 0.0] if group == "spinal" else offsets.get(f"{cond}|{level}")
            if schema.CONDITION_INFO[cond].group != group or off is None or np.isnan(canal).any() \
                    or series_id not in by_id:
                continue
            s = by_id[series_id]
            samples.append(SliceSample(s, canal + np.asarray(off), s.index_of_instance(instance)))
    return samples


def fit_slice_scorer(samples: list[SliceSample], cfg: LocalizerConfig, device: torch.device,
                     name: str = "slice scorer") -> SliceScorer | None:
    """Train the scorer: cross-entropy of the softmax over each point's candidates, annotated slice the
    target (points whose annotated slice is no candidate are left out). None without samples."""
    rng = np.random.default_rng(cfg.seed)
    groups = []
    for smp in samples:
        cands = slice_candidates(smp.series, smp.point, cfg.slice_window_mm)
        if smp.target in cands:
            groups.append((smp, cands, series_window(smp.series, *WINDOW_PCT)))
    if not groups:
        return None
    torch.manual_seed(cfg.seed)
    model = SliceScorer(width=max(cfg.width, 8)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.slice_epochs, 1))
    for epoch in range(cfg.slice_epochs):
        model.train()
        total = 0.0
        for start in range(0, len(groups), cfg.batch_size):
            batch = [groups[i] for i in rng.permutation(len(groups))[start:start + cfg.batch_size]]
            patches, sizes, targets = [], [], []
            for smp, cands, window in batch:
                jitter = rng.uniform(-cfg.slice_jitter_mm, cfg.slice_jitter_mm, 2)
                shift = np.repeat(jitter[None], len(cands), 0)
                x = slice_patches(smp.series, cands, smp.point, cfg, window, shift)
                patches.append(x * np.float32(rng.uniform(0.85, 1.15)))
                sizes.append(len(cands))
                targets.append(cands.index(smp.target))
            scores = model(torch.from_numpy(np.concatenate(patches)).to(device))
            loss = torch.stack([nn.functional.cross_entropy(sc[None], torch.tensor([t], device=device))
                                for sc, t in zip(torch.split(scores, sizes), targets)]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        sched.step()
        if epoch == 0 or (epoch + 1) % 10 == 0:
            log.info("%s epoch %d: loss %.4f (%d points)", name, epoch + 1, total / len(groups), len(groups))
    for smp, _, _ in groups:
        smp.series.clear_cache()
    return model.cpu().eval()


# ----------------------------------------------------------------------------- the localiser


@dataclass
class Localizer:
    """Fold models (averaged) and learned offsets: everything needed to localise a new study."""

    models: list[KeypointNet]
    offsets: dict[str, list[float]]
    cfg: LocalizerConfig
    # Per condition group, the fold scorers; a group without any takes the nearest slice.
    slice_models: dict[str, list[SliceScorer]] = field(default_factory=dict)

    @torch.no_grad()
    def pick_slice(self, group: str, series: Series, point: np.ndarray) -> int:
        """The candidate slice the group's scorers (averaged) rate highest for a point."""
        cands = slice_candidates(series, point, self.cfg.slice_window_mm)
        x = torch.from_numpy(slice_patches(series, cands, point, self.cfg, series_window(series, *WINDOW_PCT)))
        scores = torch.stack([torch.log_softmax(m(x), 0) for m in self.slice_models[group]]).mean(0)
        return cands[int(scores.argmax())]

    @torch.no_grad()
    def canal_points(self, series: Series) -> np.ndarray:
        """The five level points (5, 3) in patient space, found on the series' middle slice."""
        i = middle_index(series)
        x = torch.from_numpy(slice_input(series, i, self.cfg.image_size))[None]
        logits = torch.stack([m(x) for m in self.models]).mean(0)
        pix = decode(logits)[0] * KeypointNet.stride
        return from_input_pixels(series, i, pix, self.cfg.image_size)

    def locate(self, found: dict[str, list[Series]]) -> tuple[list[CropRequest], dict[tuple[str, str], float]]:
        """Crop requests for every (condition, level) that could be placed, and the distance in mm from
        the chosen slice's plane (for diagnostics)."""
        sag = found.get(schema.SAG_T2) or found.get(schema.SAG_T1)
        if not sag:
            return [], {}
        canal = self.canal_points(sag[0])
        requests, dists = [], {}
        for cond in schema.CONDITIONS:
            info = schema.CONDITION_INFO[cond]
            targets = found.get(info.series, [])
            if info.series == schema.SAG_T1 or info.series == schema.SAG_T2:
                targets = targets[:1]
            for li, level in enumerate(schema.LEVELS):
                if cond == SPINAL:
                    point = canal[li]
                else:
                    off = self.offsets.get(f"{cond}|{level}")
                    if off is None:
                        continue
                    point = canal[li] + np.asarray(off)
                best = None
                for s in targets:
                    idx, x, y, d = s.project(point)
                    if self.slice_models.get(info.group):
                        picked = self.pick_slice(info.group, s, point)
                        px, py, dist = patient_to_pixel(s.slices[picked].geometry, point)
                        if inside_image(s.slices[picked].geometry, float(px), float(py)):
                            idx, x, y, d = picked, float(px), float(py), abs(float(dist))
                    if inside_image(s.slices[idx].geometry, x, y) and (best is None or d < best[0]):
                        best = (d, s, idx, x, y)
                if best is None:
                    continue
                d, s, idx, x, y = best
                if info.group == "subarticular" and d > self.cfg.axial_tolerance_mm:
                    continue
                requests.append(CropRequest(cond, level, int(s.series_id), s.slices[idx].instance_number, x, y))
                dists[(cond, level)] = d
        return requests, dists

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / LOCALIZER_PT) as tmp:
            torch.save({"models": [m.state_dict() for m in self.models], "offsets": self.offsets,
                        "slice_models": {g: [m.state_dict() for m in ms] for g, ms in self.slice_models.items()},
                        "config": config_mod.to_dict(self.cfg)}, tmp)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Localizer:
        path = Path(folder) / LOCALIZER_PT
        if not path.is_file():
            raise DataError(f"{path} not found: run scripts/03_train_localizer.py first")
        payload = torch.load(path, map_location=device, weights_only=False)
        cfg = config_mod.from_dict(LocalizerConfig, payload["config"])
        models = []
        for sd in payload["models"]:
            m = KeypointNet(3, N_LEVELS, cfg.width)
            m.load_state_dict(sd)
            models.append(m.eval())
        scorers: dict[str, list[SliceScorer]] = {}
        for group, states in payload.get("slice_models", {}).items():
            for sd in states:
                m = SliceScorer(width=max(cfg.width, 8))
                m.load_state_dict(sd)
                scorers.setdefault(group, []).append(m.eval())
        return cls(models, payload["offsets"], cfg, scorers)


# ----------------------------------------------------------------------------- train + evaluate


def evaluate(localizer: Localizer, data_dir: Path, points: dict[int, StudyPoints],
             series: pd.DataFrame) -> pd.DataFrame:
    """Per annotated point: error in mm of the predicted point and whether the slice is right."""
    rows = []
    for sid, sp in points.items():
        found = load_study_series(images_dir(data_dir, "train") / str(sid), series[series.study_id == sid])
        requests, _ = localizer.locate(found)
        by_id = {int(s.series_id): s for lst in found.values() for s in lst}
        for r in requests:
            key = (r.condition, r.level)
            if key not in sp.points:
                continue
            s = by_id[r.series_id]
            pred = s.pixel_to_patient(s.index_of_instance(r.instance_number), r.x, r.y)
            true_series, true_inst = sp.instances[key]
            rows.append({"study_id": sid, "condition": r.condition, "level": r.level,
                         "error_mm": float(np.linalg.norm(pred - sp.points[key])),
                         "slice_correct": bool(r.series_id == true_series and r.instance_number == true_inst),
                         "series_id": r.series_id, "instance_number": r.instance_number, "x": r.x, "y": r.y})
        for key in set(sp.points) - {(r.condition, r.level) for r in requests}:
            rows.append({"study_id": sid, "condition": key[0], "level": key[1], "error_mm": np.nan,
                         "slice_correct": False})
    return pd.DataFrame(rows, columns=list(OOF_POINT_COLUMNS))


def localizer_inputs(exp: LocalizerExperiment, data_dir: Path, output_dir: Path) -> dict[str, Any]:
    """What a trained localiser is made from: its settings, the folds, the coordinates and the images."""
    return {"config": config_mod.to_dict(exp), "folds": file_state(output_dir / folds_csv(exp.folds.n_folds)),
            "coordinates": file_state(data_dir / schema.COORDS_CSV),
            "series": file_state(data_dir / schema.TRAIN_SERIES_CSV),
            "images": tree_state(images_dir(data_dir, "train"))}


def train_localizer(exp: LocalizerExperiment, data_dir: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Fold models with out-of-fold localisation metrics; the saved localiser averages the fold models.

    Each finished fold is kept in ``fold<k>/`` with a record of its inputs, so an interrupted run resumes
    at the first unfinished fold; a localiser whose inputs have not changed is not trained again.
    """
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    cfg = exp.localizer
    unknown = set(cfg.slice_groups) - set(schema.GROUPS)
    if unknown:
        raise ConfigError(f"config key 'localizer.slice_groups': unknown group {sorted(unknown)[0]!r} "
                          f"(choose from {', '.join(schema.GROUPS)})")
    out = output_dir / exp.name
    folds = load_folds(output_dir, exp.folds.n_folds)
    inputs = localizer_inputs(exp, data_dir, output_dir)
    if is_current(out / LOCALIZER_PT, inputs) and (out / METRICS_JSON).is_file():
        log.info("localiser %s is up to date", out)
        return json.loads((out / METRICS_JSON).read_text())
    config_mod.save(exp, out / CONFIG_YAML)
    device = resolve_device(cfg.device)
    series = load_series_descriptions(data_dir, "train")
    points = annotated_points(data_dir, folds.study_id.tolist())
    if not points:
        raise DataError(f"{data_dir / schema.COORDS_CSV} has no usable coordinates to train the localiser")
    t0 = time.perf_counter()
    fold_locs, evals = [], []
    for fold in sorted(folds.fold.unique()):
        fold_out = out / f"fold{fold}"
        if is_current(fold_out / LOCALIZER_PT, inputs) and (fold_out / OOF_POINTS_CSV).is_file():
            log.info("localizer fold %d already trained; kept", fold)
            fold_locs.append(Localizer.load(fold_out))
            evals.append(pd.read_csv(fold_out / OOF_POINTS_CSV))
            continue
        train_ids = set(folds[folds.fold != fold].study_id)
        tr = {s: p for s, p in points.items() if s in train_ids}
        va = {s: p for s, p in points.items() if s not in train_ids}
        samples = sagittal_samples(data_dir, tr, series, cfg.image_size)
        log.info("localizer fold %d: %d training slices, %d held-out studies", fold, len(samples), len(va))
        model = fit_keypoints(samples, cfg, device).cpu()
        offsets = learn_offsets(tr)
        fold_scorers = {}
        for group in cfg.slice_groups:
            scorer = fit_slice_scorer(slice_samples(data_dir, tr, series, offsets, group), cfg, device,
                                      f"{group} slice scorer")
            if scorer is not None:
                fold_scorers[group] = [scorer]
        fold_loc = Localizer([model], offsets, cfg, fold_scorers)
        ev = evaluate(fold_loc, data_dir, va, series).assign(fold=int(fold))
        fold_loc.save(fold_out)
        write_csv(ev, fold_out / OOF_POINTS_CSV)
        write_stamp(fold_out / LOCALIZER_PT, inputs)
        fold_locs.append(fold_loc)
        evals.append(ev)
    scorers: dict[str, list[SliceScorer]] = {}
    for fl in fold_locs:
        for group, ms in fl.slice_models.items():
            scorers.setdefault(group, []).extend(ms)
    localizer = Localizer([m for fl in fold_locs for m in fl.models], learn_offsets(points), cfg, scorers)
    oof = pd.concat(evals, ignore_index=True)
    write_csv(oof, out / OOF_POINTS_CSV)
    metrics = {"train_seconds": time.perf_counter() - t0, "n_points": int(len(oof)),
               "median_error_mm": float(oof.error_mm.median()), "per_condition": {}}
    for cond, g in oof.groupby("condition"):
        metrics["per_condition"][cond] = {
            "median_error_mm": float(g.error_mm.median()), "mean_error_mm": float(g.error_mm.mean()),
            "within_10mm": float((g.error_mm < 10).mean()), "slice_accuracy": float(g.slice_correct.mean()),
            "located": float(g.error_mm.notna().mean())}
    write_json(out / METRICS_JSON, metrics)
    localizer.save(out)
    write_stamp(out / LOCALIZER_PT, inputs)
    log.info("localizer OOF: median error %.1f mm; %s", metrics["median_error_mm"],
             json.dumps({c: round(v["median_error_mm"], 1) for c, v in metrics["per_condition"].items()}))
    return metrics
