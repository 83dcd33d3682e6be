"""Annotated points as the detectors' training targets, and the axial candidates a level competes among."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lsdc import schema
from lsdc.data import images_dir, load_coordinates
from lsdc.dicom import read_header
from lsdc.errors import DataError
from lsdc.geometry import inside_image, patient_to_pixel, pixel_to_patient
from lsdc.localize.config import LocalizerConfig
from lsdc.localize.stack import Stack
from lsdc.localize.views import CANAL, CANAL_ROI, FORAMEN, N_LEVELS, SIDES, SPINAL, View

log = logging.getLogger(__name__)


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


def level_centre(sp: StudyPoints, level: int, stack: Stack) -> np.ndarray:
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
            lateral = stack.lateral(level_centre(sp, level, stack))
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
