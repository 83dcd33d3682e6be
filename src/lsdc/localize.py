"""Test-time localisation: each (condition, level) found directly in the view it is graded on.

Three detectors, one per view, each a small heatmap U-Net (:class:`lsdc.models.KeypointNet`) run on every
slice of the view's series, the slice and its two neighbours as channels:

- ``canal``: Sagittal T2/STIR (Sagittal T1 when the study has none), one channel per level. The five
  points share one slice, as annotators place them: the slice with the best joint score of the five levels.
- ``foramen``: Sagittal T1, one channel per level. Each level's left and right foramen is the best slice on
  that side of the level's canal point (found on the sagittal canal view), so scoliosis and a rotated
  patient move the candidates with the spine.
- ``recess``: every Axial T2 series of the study, two channels (left, right). A level's candidates are the
  axial slices, over all axial series, whose plane passes within ``axial_window_mm`` of that level's canal
  point: levels on axial stacks come through patient coordinates from the sagittal points.

Each channel's map on a slice gives a slice score, the log-sum-exp of its logits (how strongly the structure
is there), and a position, the softmax-weighted mean near the peak. Training minimises, per annotated point,
the cross-entropy of the softmax over candidate slices (the annotated slice against its neighbours and
others) plus the cross-entropy between the spatial softmax on the annotated slice and a Gaussian around the
point. The output is a list of :class:`lsdc.crops.CropRequest`, cropped by the very code that made the
training crops.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import CropRequest, resample_patch, series_window
from lsdc.data import images_dir, load_coordinates, load_series_descriptions, load_study_series
from lsdc.dicom import Series, read_header
from lsdc.errors import ConfigError, DataError, NonFiniteOutput
from lsdc.experiment import CONFIG_YAML, METRICS_JSON, FoldConfig, resolve_device
from lsdc.folds import folds_csv, load_folds
from lsdc.geometry import inside_image, patient_to_pixel, pixel_to_patient
from lsdc.io import atomic_path, write_csv, write_json
from lsdc.models import KeypointNet
from lsdc.stamps import file_state, is_current, tree_state, write_stamp

log = logging.getLogger(__name__)
SPINAL = schema.condition_for("spinal")
LOCALIZER_PT = "localizer.pt"
OOF_POINTS_CSV = "oof_points.csv"
WINDOW_PCT = (1.0, 99.5)   # the detectors' inputs are windowed per series like the crops
LEFT = np.array([1.0, 0.0, 0.0])   # the patient's left in LPS coordinates
# Per held-out cell: the crop request the localiser made (empty when it placed none), and, for annotated
# cells, its error; lsdc.localized_oof classifies exactly these crops.
OOF_POINT_COLUMNS = ("study_id", "condition", "level", "annotated", "error_mm", "slice_correct", "series_id",
                     "instance_number", "x", "y")
N_LEVELS = len(schema.LEVELS)


@dataclass
class LocalizerConfig:
    image_size: int = 256            # each slice is resized to this square
    width: int = 16                  # base channels of each view's network
    stride: int = 2                  # heatmap cell = stride input pixels (2 or 4)
    sigma: float = 1.5               # target Gaussian around a point, in heatmap cells
    epochs: int = 30
    lr: float = 2e-3
    context_slices: int = 2          # training: the annotated slices and this many neighbours on each side ...
    random_slices: int = 3           # ... and this many other slices per series compete for each point
    axial_window_mm: float = 12.0    # a level's axial candidates: planes this close to its canal point
    # A recess lies at its disc's height, as the level's canal point does: each axial candidate's score gets
    # the log of a Gaussian of its plane's distance from that point (0: the detector alone decides).
    axial_prior_mm: float = 4.0
    axial_jitter_mm: float = 3.0     # training: the canal point moves as the detected one would
    # The second canal, foramen and recess detectors see a square of this side around the canal (0: the
    # second canal detector is left out; the others see the whole image).
    canal_roi_mm: float = 180.0
    foramen_roi_mm: float = 160.0
    recess_roi_mm: float = 70.0
    augment: bool = True
    device: str = "auto"
    seed: int = 0


@dataclass
class LocalizerExperiment:
    """The localiser's config file: its folder name, the shared folds and its own settings."""

    name: str = "localizer"
    folds: FoldConfig = field(default_factory=FoldConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)


@dataclass(frozen=True)
class View:
    """One detector: the metric group it places and its number of output channels."""

    name: str
    group: str
    channels: int


CANAL = View("canal", "spinal", N_LEVELS)          # the whole sagittal image: which vertebra is which
CANAL_ROI = View("canal_roi", "spinal", N_LEVELS)  # a square around the first estimate: where exactly
FORAMEN = View("foramen", "foraminal", N_LEVELS)
RECESS = View("recess", "subarticular", 2)         # channel 0: left recess, 1: right
VIEWS = (CANAL, CANAL_ROI, FORAMEN, RECESS)
SIDES = ("left", "right")
# The series each view runs on (any one of them; the canal view prefers the first).
VIEW_SERIES: dict[str, tuple[str, ...]] = {CANAL.name: (schema.SAG_T2, schema.SAG_T1),
                                           CANAL_ROI.name: (schema.SAG_T2, schema.SAG_T1),
                                           FORAMEN.name: (schema.SAG_T1,), RECESS.name: (schema.AXIAL_T2,)}

# Why a cell got no point (Localizer.locate's info["unplaced"]), for the prediction report.
NO_SERIES = "no_series"                  # the study has no usable series of the view's descriptions
SERIES_UNREADABLE = "series_unreadable"  # the series is there but its pixels cannot be read
NOT_PLACED = "not_placed"                # the series was read; no slice fits the point (the detail says why)


@dataclass(frozen=True)
class Unplaced:
    """Why the localiser placed no point for one cell: ``reason`` (NO_SERIES, SERIES_UNREADABLE or
    NOT_PLACED), in its own words (``detail``), and with NO_SERIES the descriptions any of which would have
    served (``needs``), so a caller who read the series table can tell a missing series from a listed one
    that could not be read."""

    reason: str
    detail: str
    needs: tuple[str, ...] = ()


def group_cells(groups: Sequence[str]) -> list[tuple[str, str]]:
    """Every (condition, level) of the given metric groups, in the competition's order."""
    return [(c, lv) for c in schema.CONDITIONS if schema.CONDITION_INFO[c].group in groups for lv in schema.LEVELS]


# ----------------------------------------------------------------------------- heatmaps


def heatmap_loss(logits: torch.Tensor, points: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean cross-entropy between each map's spatial softmax and a Gaussian around its point.

    ``logits`` (N, h, w), ``points`` (N, 2) in heatmap cells (x, y).
    """
    n, h, w = logits.shape
    ys = torch.arange(h, device=logits.device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=logits.device, dtype=torch.float32)[None, :]
    d2 = (xs - points[:, 0, None, None]) ** 2 + (ys - points[:, 1, None, None]) ** 2
    target = torch.softmax((-d2 / (2 * sigma**2)).view(n, -1), dim=-1)
    return -(target * torch.log_softmax(logits.float().view(n, -1), dim=-1)).sum(-1).mean()


def slice_scores(logits: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) logits -> (n, C) slice scores: log-sum-exp over each map."""
    return torch.logsumexp(logits.float().flatten(2), dim=-1)


def decode(maps: np.ndarray) -> np.ndarray:
    """(K, h, w) logits -> (K, 2) points (x, y) in heatmap cells: softmax-weighted mean near the peak."""
    k, h, w = maps.shape
    flat = maps.reshape(k, -1).astype(np.float64)
    prob = np.exp(flat - flat.max(1, keepdims=True)).reshape(k, h, w)
    out = np.zeros((k, 2))
    for j in range(k):
        y0, x0 = np.unravel_index(np.argmax(prob[j]), (h, w))
        ya, yb, xa, xb = max(0, y0 - 2), min(h, y0 + 3), max(0, x0 - 2), min(w, x0 + 3)
        win = prob[j, ya:yb, xa:xb]
        gy, gx = np.mgrid[ya:yb, xa:xb]
        out[j] = ((gx * win).sum() / win.sum(), (gy * win).sum() / win.sum())
    return out


# ----------------------------------------------------------------------------- a series as the detectors see it


class Stack:
    """Every slice of a series as a detector's input: the whole image, or with ``centres`` (a patient point
    per slice) a square of ``roi_mm`` around its projection, resampled to ``size`` x ``size`` and windowed
    per series (uint8); with the mapping between a slice's pixels and heatmap cells.

    A region of interest keeps small structures large enough to see: a recess is a few pixels of a whole
    axial image at 96 px, a dozen of a 100 mm square around the canal.
    """

    def __init__(self, series: Series, size: int, stride: int, centres: list[np.ndarray] | None = None,
                 roi_mm: float = 0.0, keep_pixels: bool = True) -> None:
        self.series, self.size, self.stride = series, size, stride
        lo, hi = series_window(series, *WINDOW_PCT)
        scale = 255.0 / (hi - lo)
        images, self.maps = [], []
        for j in range(len(series)):
            g = series.slices[j].geometry
            img = np.asarray(series.image(j), np.float32)
            if centres is None:
                sx, sy = g.cols / size, g.rows / size       # input pixel a <-> image x = sx * a + ox
                ox, oy = 0.5 * sx - 0.5, 0.5 * sy - 0.5
                out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            else:
                x, y, _ = patient_to_pixel(g, centres[j])
                sx, sy = roi_mm / size / g.spacing[1], roi_mm / size / g.spacing[0]
                ox, oy = float(x) - (size - 1) / 2 * sx, float(y) - (size - 1) / 2 * sy
                out = resample_patch(img, float(x), float(y), roi_mm, g.spacing, size)
            self.maps.append((sx, sy, ox, oy))
            images.append(cv2.convertScaleAbs(out, alpha=scale, beta=-lo * scale))
        self.images = np.stack(images)
        if not keep_pixels:
            series.clear_cache()

    def __len__(self) -> int:
        return len(self.images)

    def inputs(self, indices: list[int]) -> np.ndarray:
        """float32 (k, 3, S, S) in [0, 1]: each slice with its neighbours (the edge slice repeated)."""
        n = len(self.images)
        idx = np.clip(np.asarray(indices)[:, None] + np.array([-1, 0, 1])[None, :], 0, n - 1)
        return self.images[idx].astype(np.float32) / 255.0

    def to_cells(self, j: int, x: float, y: float) -> tuple[float, float]:
        """Pixel (x, y) of slice j -> heatmap cell coordinates (cell centres at integers)."""
        sx, sy, ox, oy = self.maps[j]
        return (((x - ox) / sx + 0.5) / self.stride - 0.5, ((y - oy) / sy + 0.5) / self.stride - 0.5)

    def to_pixels(self, j: int, u: float, v: float) -> tuple[float, float]:
        sx, sy, ox, oy = self.maps[j]
        return (sx * ((u + 0.5) * self.stride - 0.5) + ox, sy * ((v + 0.5) * self.stride - 0.5) + oy)

    def lateral(self, point: np.ndarray) -> np.ndarray:
        """(n,) signed distance in mm of each slice's centre from ``point`` towards the patient's left."""
        centres = np.array([pixel_to_patient(s.geometry, (s.geometry.cols - 1) / 2, (s.geometry.rows - 1) / 2)
                            for s in self.series.slices])
        return (centres - point) @ LEFT

    def plane_distances(self, point: np.ndarray) -> np.ndarray:
        """(n,) distance in mm of ``point`` from each slice's plane."""
        return np.array([abs(float(patient_to_pixel(s.geometry, point)[2])) for s in self.series.slices])


def roi_centres(series: Series, canal: np.ndarray, view: View) -> list[np.ndarray]:
    """Per slice, the patient point its region of interest is centred on: the middle of the canal's level
    points for the foramina (sagittal planes are parallel: one point serves all), the level point whose
    disc the slice is nearest to for the recesses."""
    known = canal[~np.isnan(canal).any(1)]
    if view is not RECESS:
        return [known.mean(0)] * len(series)
    out = []
    for s in series.slices:
        dist = [abs(float(patient_to_pixel(s.geometry, p)[2])) for p in known]
        out.append(known[int(np.argmin(dist))])
    return out


def view_stack(view: View, series: Series, canal: np.ndarray | None, cfg: LocalizerConfig,
               keep_pixels: bool = True) -> Stack:
    """A series as ``view``'s detector sees it: the whole image for the canal, a region of interest around
    the canal for the foramina and the recesses (the whole image when no canal point is known)."""
    roi = {CANAL_ROI.name: cfg.canal_roi_mm, FORAMEN.name: cfg.foramen_roi_mm,
           RECESS.name: cfg.recess_roi_mm}.get(view.name, 0.0)
    if roi <= 0 or canal is None or np.isnan(canal).all():
        return Stack(series, cfg.image_size, cfg.stride, keep_pixels=keep_pixels)
    return Stack(series, cfg.image_size, cfg.stride, roi_centres(series, canal, view), roi, keep_pixels)


# ----------------------------------------------------------------------------- annotations


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


@dataclass
class Target:
    """One annotated point as a training target: its channel, its slice (stack, index), its heatmap
    position there, and the slices it competes against."""

    channel: int
    stack: int
    index: int
    cell: tuple[float, float]
    candidates: list[tuple[int, int]]
    prior: list[float] | None = None   # log prior of each candidate (axial: its plane's distance), or none


@dataclass
class ViewSample:
    """One study's series of one view, as stacks, with the study's annotations."""

    stacks: list[Stack]
    points: StudyPoints


def view_series(view: View, found: dict[str, list[Series]]) -> list[Series]:
    """The series a detector runs on: the first Sagittal T2/STIR (else T1) for the canal, the first
    Sagittal T1 for the foramina, every Axial T2 for the recesses."""
    if view in (CANAL, CANAL_ROI):
        return (found.get(schema.SAG_T2) or found.get(schema.SAG_T1) or [])[:1]
    if view is FORAMEN:
        return found.get(schema.SAG_T1, [])[:1]
    return list(found.get(schema.AXIAL_T2, []))


def _level_centre(sp: StudyPoints, level: int, stack: Stack) -> np.ndarray:
    """The level's annotated canal point, or the middle of the stack's slices when it has none."""
    if not np.isnan(sp.canal[level]).any():
        return sp.canal[level]
    mid = stack.series.slices[len(stack) // 2].geometry
    return pixel_to_patient(mid, (mid.cols - 1) / 2, (mid.rows - 1) / 2)


def view_targets(view: View, sample: ViewSample, cfg: LocalizerConfig,
                 rng: np.random.Generator | None) -> list[Target]:
    """The training targets of one study's view. ``rng`` jitters the axial windows (None: no jitter)."""
    sp, stacks = sample.points, sample.stacks
    targets = []
    if view in (CANAL, CANAL_ROI):
        stack = stacks[0]
        for level in range(N_LEVELS):
            p = sp.canal[level]
            if np.isnan(p).any():
                continue
            key = (SPINAL, schema.LEVELS[level])
            sid, inst = sp.instances[key]
            j = stack.series.index_of_instance(inst) if sid == stack.series.series_id else stack.series.project(p)[0]
            x, y, _ = patient_to_pixel(stack.series.slices[j].geometry, p)
            targets.append(Target(level, 0, j, stack.to_cells(j, float(x), float(y)),
                                  [(0, i) for i in range(len(stack))]))
        return targets
    if view is FORAMEN:
        stack = stacks[0]
        for level, lv in enumerate(schema.LEVELS):
            lateral = stack.lateral(_level_centre(sp, level, stack))
            for side in SIDES:
                key = (schema.condition_for("foraminal", side), lv)
                if key not in sp.points or sp.instances[key][0] != stack.series.series_id:
                    continue
                j = stack.series.index_of_instance(sp.instances[key][1])
                x, y, _ = patient_to_pixel(stack.series.slices[j].geometry, sp.points[key])
                sign = 1.0 if side == "left" else -1.0
                cands = [(0, i) for i in range(len(stack)) if sign * lateral[i] > 0 or i == j]
                targets.append(Target(level, 0, j, stack.to_cells(j, float(x), float(y)), cands))
        return targets
    by_id = {int(s.series.series_id): k for k, s in enumerate(stacks)}
    for level, lv in enumerate(schema.LEVELS):
        for channel, side in enumerate(SIDES):
            key = (schema.condition_for("subarticular", side), lv)
            if key not in sp.points or sp.instances[key][0] not in by_id:
                continue
            k = by_id[sp.instances[key][0]]
            j = stacks[k].series.index_of_instance(sp.instances[key][1])
            centre = sp.canal[level] if not np.isnan(sp.canal[level]).any() else sp.points[key]
            if rng is not None:
                centre = centre + rng.normal(0, cfg.axial_jitter_mm, 3)
            cands = axial_candidates(stacks, centre, cfg.axial_window_mm)
            if (k, j) not in cands:
                cands.append((k, j))
            x, y, _ = patient_to_pixel(stacks[k].series.slices[j].geometry, sp.points[key])
            targets.append(Target(channel, k, j, stacks[k].to_cells(j, float(x), float(y)), cands,
                                  axial_prior(stacks, cands, centre, cfg.axial_prior_mm)))
    return targets


def axial_prior(stacks: list[Stack], cands: list[tuple[int, int]], centre: np.ndarray, sigma_mm: float
                ) -> list[float] | None:
    """Log Gaussian prior of each axial candidate on its plane's distance from the level's canal point."""
    if sigma_mm <= 0:
        return None
    dist = [stacks[k].plane_distances(centre)[j] for k, j in cands]
    return [-0.5 * (d / sigma_mm) ** 2 for d in dist]


def axial_candidates(stacks: list[Stack], centre: np.ndarray, window_mm: float) -> list[tuple[int, int]]:
    """(stack, slice) of every axial slice whose plane passes within ``window_mm`` of ``centre`` and whose
    image contains its projection."""
    out = []
    for k, stack in enumerate(stacks):
        dist = stack.plane_distances(centre)
        for j in np.flatnonzero(dist <= window_mm):
            g = stack.series.slices[j].geometry
            x, y, _ = patient_to_pixel(g, centre)
            if inside_image(g, float(x), float(y)):
                out.append((k, int(j)))
    return out


# ----------------------------------------------------------------------------- training


def _augment(x: np.ndarray, cells: list[tuple[float, float]], stride: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One random rotation/scale/shift and intensity change for all slices of a sample, points moved along."""
    size = x.shape[-1]
    m = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), rng.uniform(-8, 8), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.06, 0.06, 2) * size
    flat = x.reshape(-1, size, size)
    out = np.stack([cv2.warpAffine(c, m, (size, size), flags=cv2.INTER_LINEAR) for c in flat]).reshape(x.shape)
    out = np.clip(out * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, out.shape).astype(np.float32), 0, 1)
    moved = []
    for u, v in cells:
        px = np.array([(u + 0.5) * stride - 0.5, (v + 0.5) * stride - 0.5, 1.0])
        qx, qy = m @ px
        moved.append(((qx + 0.5) / stride - 0.5, (qy + 0.5) / stride - 0.5))
    return out.astype(np.float32), moved


def _forward_set(targets: list[Target], stacks: list[Stack], cfg: LocalizerConfig,
                 rng: np.random.Generator) -> dict[int, list[int]]:
    """Per stack, the slices a training step runs: every point's slice, its neighbours, a few others, and
    (axial) every candidate."""
    chosen: dict[int, set[int]] = {}
    for t in targets:
        n = len(stacks[t.stack])
        chosen.setdefault(t.stack, set()).update(
            range(max(0, t.index - cfg.context_slices), min(n, t.index + cfg.context_slices + 1)))
        if len(t.candidates) <= 2 * cfg.context_slices + 1 + cfg.random_slices:
            for k, j in t.candidates:
                chosen.setdefault(k, set()).add(j)
    for k, js in chosen.items():
        n = len(stacks[k])
        rest = sorted(set(range(n)) - js)
        if rest:
            js.update(rng.choice(rest, min(cfg.random_slices, len(rest)), replace=False).tolist())
    return {k: sorted(js) for k, js in chosen.items()}


def fit_view(view: View, samples: list[ViewSample], cfg: LocalizerConfig, device: torch.device) -> KeypointNet:
    """Train one view's detector on its training studies (one study per optimiser step)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = KeypointNet(3, view.channels, cfg.width, cfg.stride).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    for epoch in range(cfg.epochs):
        model.train()
        total, steps = 0.0, 0
        for i in rng.permutation(len(samples)):
            sample = samples[i]
            targets = view_targets(view, sample, cfg, rng)
            if not targets:
                continue
            run = _forward_set(targets, sample.stacks, cfg, rng)
            order = [(k, j) for k in sorted(run) for j in run[k]]
            pos = {kj: n for n, kj in enumerate(order)}
            x = np.concatenate([sample.stacks[k].inputs(run[k]) for k in sorted(run)])
            cells = [t.cell for t in targets]
            if cfg.augment:
                x, cells = _augment(x, cells, cfg.stride, rng)
            logits = model(torch.from_numpy(x).to(device))
            scores = slice_scores(logits)
            slice_loss = []
            for t in targets:
                kept = [n for n, c in enumerate(t.candidates) if c in pos]
                cand = [pos[t.candidates[n]] for n in kept]
                logit = scores[cand, t.channel]
                if t.prior is not None:
                    logit = logit + torch.tensor([t.prior[n] for n in kept], device=device)
                own = cand.index(pos[(t.stack, t.index)])
                slice_loss.append(-torch.log_softmax(logit, 0)[own])
            maps = torch.stack([logits[pos[(t.stack, t.index)], t.channel] for t in targets])
            where = torch.tensor(cells, dtype=torch.float32, device=device)
            loss = torch.stack(slice_loss).mean() + heatmap_loss(maps, where, cfg.sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        sched.step()
        if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
            log.info("%s detector epoch %d: loss %.4f (%d studies)", view.name, epoch + 1, total / max(steps, 1),
                     steps)
    return model.cpu().eval()


def view_samples(view: View, data_dir: Path, points: dict[int, StudyPoints], series: pd.DataFrame,
                 cfg: LocalizerConfig) -> list[ViewSample]:
    """Each annotated study's stacks of one view (decoded once; the canal view also trains on Sagittal T1)."""
    out = []
    for sid, sp in points.items():
        found = load_study_series(images_dir(data_dir, "train") / str(sid), series[series.study_id == sid])
        lists = [view_series(view, found)]
        if view in (CANAL, CANAL_ROI) and found.get(schema.SAG_T2) and found.get(schema.SAG_T1):
            lists.append(found[schema.SAG_T1][:1])   # the canal is found on T1 when a study lacks T2
        for chosen in lists:
            if chosen:
                out.append(ViewSample([view_stack(view, s, sp.canal, cfg, keep_pixels=False) for s in chosen], sp))
    return out


# ----------------------------------------------------------------------------- the localiser


@dataclass
class Localizer:
    """Each view's fold models (their logits averaged): everything needed to localise a new study."""

    models: dict[str, list[KeypointNet]]
    cfg: LocalizerConfig

    @torch.no_grad()
    def run(self, view: View, stack: Stack) -> np.ndarray:
        """(n, C, h, w) logits of a view's detector on every slice of a stack (mean over fold models).

        NonFiniteOutput when they are not all finite: broken weights would place every point at random."""
        models = self.models[view.name]
        x = torch.from_numpy(stack.inputs(list(range(len(stack))))).to(next(models[0].parameters()).device)
        logits = torch.stack([m(x) for m in models]).mean(0)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteOutput(f"the localiser's {view.name} detector gave non-finite outputs on "
                                  f"{stack.series.name}: its weights are broken; train it again with "
                                  "scripts/03_train_localizer.py")
        return logits.cpu().numpy()

    def locate(self, found: dict[str, list[Series]]) -> tuple[list[CropRequest], dict[str, Any]]:
        """Crop requests for every (condition, level) that could be placed, and what was found: the canal
        points in patient space, the views that could not run (``missing``) and, for every cell without a
        request, why (``unplaced``: (condition, level) -> :class:`Unplaced`).

        A series whose pixels cannot be read (DataError) loses its own view's cells only."""
        requests: list[CropRequest] = []
        unplaced: dict[tuple[str, str], Unplaced] = {}
        info: dict[str, Any] = {"canal_points": None, "missing": [], "unplaced": unplaced}
        canal_series = view_series(CANAL, found)
        if not canal_series:
            info["missing"].append("no sagittal series: no level can be placed")
            unplaced.update(dict.fromkeys(group_cells(schema.GROUPS), Unplaced(
                NO_SERIES, "no sagittal series: no level can be placed", VIEW_SERIES[CANAL.name])))
            return requests, info
        try:
            stack = Stack(canal_series[0], self.cfg.image_size, self.cfg.stride)
            canal, j, pixels = self._canal(CANAL, stack)
            if CANAL_ROI.name in self.models:
                stack = view_stack(CANAL_ROI, canal_series[0], canal, self.cfg)
                canal, j, pixels = self._canal(CANAL_ROI, stack)
        except DataError as exc:
            info["missing"].append(f"sagittal series unreadable: no level can be placed ({exc})")
            unplaced.update(dict.fromkeys(group_cells(schema.GROUPS), Unplaced(
                SERIES_UNREADABLE, f"{canal_series[0].description} {canal_series[0].name}: {exc}")))
            return requests, info
        for level, lv in enumerate(schema.LEVELS):
            requests.append(self._request(SPINAL, lv, stack, j, *pixels[level]))
        info["canal_points"] = canal
        for view, place in ((FORAMEN, self._foramina), (RECESS, self._recesses)):
            chosen = view_series(view, found)
            cells = group_cells([view.group])
            if not chosen:
                what = f"no {' or '.join(VIEW_SERIES[view.name])}: no {view.group} point placed"
                info["missing"].append(what)
                unplaced.update(dict.fromkeys(cells, Unplaced(NO_SERIES, what, VIEW_SERIES[view.name])))
                continue
            try:
                placed, why = place(chosen, canal)
            except DataError as exc:
                info["missing"].append(f"{view.group} series unreadable: no {view.group} point placed ({exc})")
                unplaced.update(dict.fromkeys(cells, Unplaced(SERIES_UNREADABLE, str(exc))))
                continue
            requests.extend(placed)
            unplaced.update({cell: Unplaced(NOT_PLACED, text) for cell, text in why.items()})
        return requests, info

    def _foramina(self, t1: list[Series], canal: np.ndarray
                  ) -> tuple[list[CropRequest], dict[tuple[str, str], str]]:
        """Each foramen on the first Sagittal T1: the best slice on its side of the level's canal point;
        a side without any slice is left out, with the reason."""
        requests, why = [], {}
        t1_stack = view_stack(FORAMEN, t1[0], canal, self.cfg)
        logits = self.run(FORAMEN, t1_stack)
        scores = slice_scores(torch.from_numpy(logits)).numpy()
        for level, lv in enumerate(schema.LEVELS):
            lateral = t1_stack.lateral(canal[level])
            for side, sign in (("left", 1.0), ("right", -1.0)):
                condition = schema.condition_for("foraminal", side)
                cands = np.flatnonzero(sign * lateral > 0)
                if not len(cands):
                    why[(condition, lv)] = f"no Sagittal T1 slice on the {side} of the {lv} canal point"
                    continue
                j = int(cands[np.argmax(scores[cands, level])])
                x, y = t1_stack.to_pixels(j, *decode(logits[j, level:level + 1])[0])
                requests.append(self._request(condition, lv, t1_stack, j, x, y))
        return requests, why

    def _recesses(self, axial: list[Series], canal: np.ndarray
                  ) -> tuple[list[CropRequest], dict[tuple[str, str], str]]:
        """Each recess over every Axial T2 series: the best candidate slice near its level's canal point; a
        level without a candidate slice is left out, with the reason."""
        requests, why = [], {}
        stacks = [view_stack(RECESS, s, canal, self.cfg) for s in axial]
        logits = [self.run(RECESS, s) for s in stacks]
        scores = [slice_scores(torch.from_numpy(lg)).numpy() for lg in logits]
        for level, lv in enumerate(schema.LEVELS):
            cands = axial_candidates(stacks, canal[level], self.cfg.axial_window_mm)
            prior = axial_prior(stacks, cands, canal[level], self.cfg.axial_prior_mm) or [0.0] * len(cands)
            for channel, side in enumerate(SIDES):
                condition = schema.condition_for("subarticular", side)
                if not cands:
                    why[(condition, lv)] = (f"no Axial T2 slice within {self.cfg.axial_window_mm:g} mm of the "
                                            f"{lv} canal point")
                    continue
                best = int(np.argmax([scores[k][j, channel] + p for (k, j), p in zip(cands, prior)]))
                k, j = cands[best]
                x, y = stacks[k].to_pixels(j, *decode(logits[k][j, channel:channel + 1])[0])
                requests.append(self._request(condition, lv, stacks[k], j, x, y))
        return requests, why

    def _canal(self, view: View, stack: Stack) -> tuple[np.ndarray, int, list[tuple[float, float]]]:
        """The canal's five level points (patient space), the slice they share and their pixels there."""
        logits = self.run(view, stack)
        scores = torch.log_softmax(slice_scores(torch.from_numpy(logits)), 0).numpy()   # (n, 5)
        j = int(np.argmax(scores.sum(1)))
        pixels = [stack.to_pixels(j, *cell) for cell in decode(logits[j])]
        canal = np.array([pixel_to_patient(stack.series.slices[j].geometry, x, y) for x, y in pixels])
        return canal, j, pixels

    @staticmethod
    def _request(condition: str, level: str, stack: Stack, j: int, x: float, y: float) -> CropRequest:
        return CropRequest(condition, level, int(stack.series.series_id), stack.series.slices[j].instance_number,
                           float(x), float(y))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / LOCALIZER_PT) as tmp:
            torch.save({"models": {v: [m.state_dict() for m in ms] for v, ms in self.models.items()},
                        "config": config_mod.to_dict(self.cfg)}, tmp)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Localizer:
        """The saved localiser, its networks in float32 on ``device`` (a half-precision pack is cast back)."""
        path = Path(folder) / LOCALIZER_PT
        if not path.is_file():
            raise DataError(f"{path} not found: run scripts/03_train_localizer.py first")
        try:
            payload = torch.load(path, map_location=device, weights_only=False)
            cfg = config_mod.from_dict(LocalizerConfig, payload["config"])
            channels = {v.name: v.channels for v in VIEWS}
            models = {}
            for view, states in payload["models"].items():
                models[view] = []
                for sd in states:
                    m = KeypointNet(3, channels[view], cfg.width, cfg.stride)
                    m.load_state_dict(sd)
                    models[view].append(m.to(device).eval())
        except Exception as exc:
            raise DataError(f"{path} is not a localiser of this version ({type(exc).__name__}: {exc}); "
                            "train it again with scripts/03_train_localizer.py") from exc
        return cls(models, cfg)


def find_localizer(folder: Path, name: str = "") -> Path:
    """A trained localiser's folder under ``folder``: ``name`` when given, else the only one there.
    DataError when it is missing, or there are several to choose from (the message lists them)."""
    found = trained_localizers(folder)
    if name:
        if not (folder / name / LOCALIZER_PT).is_file():
            raise DataError(f"{folder / name / LOCALIZER_PT} not found: run scripts/03_train_localizer.py "
                            f"(localisers in {folder}: {', '.join(found) or 'none'})")
        return folder / name
    if len(found) != 1:
        raise DataError(f"{'several' if found else 'no'} trained localiser(s) in {folder}"
                        + (f" ({', '.join(found)}): choose one with --set localizer=NAME" if found
                           else ": run scripts/03_train_localizer.py"))
    log.info("localiser: %s", folder / found[0])
    return folder / found[0]


def trained_localizers(folder: Path) -> list[str]:
    """Folders under ``folder`` holding a trained localiser."""
    if not folder.is_dir():
        return []
    return sorted(d.name for d in folder.iterdir() if (d / LOCALIZER_PT).is_file())


# ----------------------------------------------------------------------------- train + evaluate


def evaluate(localizer: Localizer, data_dir: Path, points: dict[int, StudyPoints], series: pd.DataFrame,
             studies: list[int]) -> pd.DataFrame:
    """Per cell of each study: the crop request the localiser made, and, for annotated cells, the error
    in mm of the predicted point and whether its slice (series and instance) is the annotated one."""
    rows = []
    for sid in studies:
        sp = points.get(sid, StudyPoints(sid, np.full((N_LEVELS, 3), np.nan), {}, {}))
        found = load_study_series(images_dir(data_dir, "train") / str(sid), series[series.study_id == sid])
        requests, _ = localizer.locate(found)
        by_id = {int(s.series_id): s for lst in found.values() for s in lst}
        for r in requests:
            key = (r.condition, r.level)
            row = {"study_id": sid, "condition": r.condition, "level": r.level, "annotated": key in sp.points,
                   "error_mm": np.nan, "slice_correct": np.nan, "series_id": r.series_id,
                   "instance_number": r.instance_number, "x": r.x, "y": r.y}
            if key in sp.points:
                s = by_id[r.series_id]
                pred = s.pixel_to_patient(s.index_of_instance(r.instance_number), r.x, r.y)
                true_series, true_inst = sp.instances[key]
                row.update(error_mm=float(np.linalg.norm(pred - sp.points[key])),
                           slice_correct=bool(r.series_id == true_series and r.instance_number == true_inst))
            rows.append(row)
        for key in set(sp.points) - {(r.condition, r.level) for r in requests}:
            rows.append({"study_id": sid, "condition": key[0], "level": key[1], "annotated": True,
                         "error_mm": np.nan, "slice_correct": False})
        for lst in found.values():
            for s in lst:
                s.clear_cache()
    return pd.DataFrame(rows, columns=list(OOF_POINT_COLUMNS))


def localizer_metrics(oof: pd.DataFrame) -> dict[str, Any]:
    """Median and mean error (mm), share within 10 mm, slice accuracy and share located, over the
    annotated cells: all of them, per metric group and per condition."""
    ann = oof[oof.annotated.astype(bool)]

    def one(g: pd.DataFrame) -> dict[str, float]:
        return {"median_error_mm": float(g.error_mm.median()), "mean_error_mm": float(g.error_mm.mean()),
                "within_10mm": float((g.error_mm < 10).mean()),
                "slice_accuracy": float(g.slice_correct.astype(bool).mean()),
                "located": float(g.error_mm.notna().mean()), "n": int(len(g))}

    groups = ann.condition.map(lambda c: schema.CONDITION_INFO[c].group)
    return {"n_points": int(len(ann)), **one(ann),
            "per_group": {g: one(ann[groups == g]) for g in schema.GROUPS if (groups == g).any()},
            "per_condition": {c: one(g) for c, g in ann.groupby("condition")}}


def localizer_inputs(exp: LocalizerExperiment, data_dir: Path, output_dir: Path) -> dict[str, Any]:
    """What a trained localiser is made from: its settings, the folds, the coordinates and the images."""
    return {"version": 3, "config": config_mod.to_dict(exp),   # 3: shrunk regions low-pass filtered
            "folds": file_state(output_dir / folds_csv(exp.folds.n_folds)),
            "coordinates": file_state(data_dir / schema.COORDS_CSV),
            "series": file_state(data_dir / schema.TRAIN_SERIES_CSV),
            "images": tree_state(images_dir(data_dir, "train"))}


def train_localizer(exp: LocalizerExperiment, data_dir: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Fold detectors with out-of-fold localisation metrics; the saved localiser averages the fold models.

    Each finished fold is kept in ``fold<k>/`` with a record of its inputs, so an interrupted run resumes
    at the first unfinished fold; a localiser whose inputs have not changed is not trained again.
    """
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    cfg = exp.localizer
    if cfg.stride not in (2, 4):
        raise ConfigError(f"config key 'localizer.stride' must be 2 or 4, got {cfg.stride}")
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
        held = folds[folds.fold == fold].study_id.astype(int).tolist()
        tr = {s: p for s, p in points.items() if s not in set(held)}
        models = {}
        for view in VIEWS:
            if view is CANAL_ROI and cfg.canal_roi_mm <= 0:
                continue
            samples = view_samples(view, data_dir, tr, series, cfg)
            log.info("localizer fold %d, %s view: %d training studies", fold, view.name, len(samples))
            models[view.name] = [fit_view(view, samples, cfg, device)]
        fold_loc = Localizer(models, cfg)
        ev = evaluate(fold_loc, data_dir, points, series, held).assign(fold=int(fold))
        fold_loc.save(fold_out)
        write_csv(ev, fold_out / OOF_POINTS_CSV)
        write_stamp(fold_out / LOCALIZER_PT, inputs)
        fold_locs.append(fold_loc)
        evals.append(ev)
    localizer = Localizer({v: [m for fl in fold_locs for m in fl.models[v]] for v in fold_locs[0].models}, cfg)
    oof = pd.concat(evals, ignore_index=True)
    write_csv(oof, out / OOF_POINTS_CSV)
    metrics = {"train_seconds": time.perf_counter() - t0, **localizer_metrics(oof)}
    write_json(out / METRICS_JSON, metrics)
    localizer.save(out)
    write_stamp(out / LOCALIZER_PT, inputs)
    log.info("localizer OOF: median error %.1f mm; per group %s", metrics["median_error_mm"],
             json.dumps({g: {"mm": round(v["median_error_mm"], 1), "slice": round(v["slice_accuracy"], 3)}
                         for g, v in metrics["per_group"].items()}))
    return metrics
