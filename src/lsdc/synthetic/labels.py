"""Labels and their noise: which train.csv cells stay empty, grades one step off the truth, and the
coordinate rows a reader writes (real conventions, a few mm off, the odd L4/L5 - L5/S1 swap)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lsdc import schema
from lsdc.geometry import nearest_slice, patient_to_pixel
from lsdc.synthetic.acquisition import SeriesPlan
from lsdc.synthetic.anatomy import CLASS_MIX, Anatomy
from lsdc.synthetic.config import SyntheticConfig

# Share of grade flips at the Normal/Mild - Moderate boundary (the rest at Moderate - Severe).
GRADE_FLIP_NM_SHARE = 0.7
# How many of the top levels (from L1/L2 down) lose both subarticular labels in a study that loses some.
EMPTY_AXIAL_LEVELS_P = (0.4, 0.3, 0.3)


def _flip_probabilities(group: str, rate: float) -> np.ndarray:
    """(3, 2): chance that a cell of each severity is written one step down / one step up.

    The flows between neighbouring grades balance (as many Normal/Mild cells become Moderate as the
    other way round), so the class mix of train.csv stays the real one while ``rate`` of all cells move.
    """
    p = CLASS_MIX[group]
    a = rate * GRADE_FLIP_NM_SHARE / 2        # share of all cells: Normal/Mild -> Moderate, and back
    b = rate * (1 - GRADE_FLIP_NM_SHARE) / 2  # Moderate -> Severe, and back
    return np.array([[0.0, a / p[0]], [a / p[1], b / p[1]], [b / p[2], 0.0]])


def noisy_grades(severity: dict[tuple[str, str], int], rng: np.random.Generator,
                 rate: float) -> dict[tuple[str, str], int]:
    """Training grades as a reader writes them: ``rate`` of the cells one step off the truth."""
    out = {}
    for (cond, level), sev in severity.items():
        down, up = _flip_probabilities(schema.CONDITION_INFO[cond].group, rate)[sev]
        u = rng.random()
        out[(cond, level)] = sev - 1 if u < down else sev + 1 if u < down + up else sev
    return out


def annotation_error(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """In-plane error (mm) of one annotated point: Gaussian, or a 3-6 mm slip for a few points."""
    gauss = rng.normal(0.0, cfg.coord_noise_mm, 2)
    slip, angle, dist = rng.random(), rng.uniform(0, 2 * np.pi), rng.uniform(*cfg.coord_outlier_mm)
    if slip < cfg.coord_outlier_rate:
        return dist * np.array([np.cos(angle), np.sin(angle)])
    return gauss


def swapped_condition(rng: np.random.Generator, cfg: SyntheticConfig) -> str | None:
    """The condition whose L4/L5 and L5/S1 points a reader swapped in this study, if any."""
    u, which = rng.random(), int(rng.integers(len(schema.CONDITIONS)))
    return schema.CONDITIONS[which] if u < cfg.level_swap_rate else None


def empty_cells(rng: np.random.Generator, cfg: SyntheticConfig) -> set[tuple[str, str]]:
    """The (condition, level) cells of a study left empty in train.csv: spinal and foraminal cells one by one,
    subarticular ones mostly as both sides of the top levels (a study whose axial series miss them)."""
    rate = {"spinal": cfg.empty_spinal_rate, "foraminal": cfg.empty_foraminal_rate,
            "subarticular": cfg.empty_one_side_rate}
    empty = {(c, lv) for c in schema.CONDITIONS for lv in schema.LEVELS
             if rng.random() < rate[schema.CONDITION_INFO[c].group]}
    if rng.random() < cfg.empty_axial_rate:
        k = int(rng.choice(len(EMPTY_AXIAL_LEVELS_P), p=EMPTY_AXIAL_LEVELS_P)) + 1
        empty |= {(c, lv) for c in schema.CONDITIONS if schema.CONDITION_INFO[c].group == "subarticular"
                  for lv in schema.LEVELS[:k]}
    return empty


def _nearest(plans: list[SeriesPlan], point: np.ndarray) -> tuple[SeriesPlan, int, float, float, float]:
    """The slice nearest to ``point`` over several series (one whose image holds it first)."""
    best = None
    for plan in plans:
        i, x, y, dist = nearest_slice(plan.slices, point)
        g = plan.slices[i]
        key = (not (0 <= x < g.cols and 0 <= y < g.rows), dist)
        if best is None or key < best[0]:
            best = (key, plan, i, x, y, dist)
    assert best is not None
    return best[1], best[2], best[3], best[4], best[5]


def annotate_coordinates(a: Anatomy, plans: list[SeriesPlan], labels: dict[str, str], rng: np.random.Generator,
                         cfg: SyntheticConfig) -> list[dict[str, Any]]:
    """Coordinate rows with the real conventions (canal on one mid-sagittal T2 slice, ...) and a reader's
    noise: in-plane slips, and now and then one condition's L4/L5 and L5/S1 points swapped."""
    by_desc: dict[str, list[SeriesPlan]] = {}
    for p in plans:
        by_desc.setdefault(p.description, []).append(p)
    rows = []

    def add(plan: SeriesPlan, i: int, x: float, y: float, cond: str, level: str) -> None:
        g = plan.slices[i]
        err = annotation_error(rng, cfg)
        x += err[0] / g.spacing[1]
        y += err[1] / g.spacing[0]
        if (not labels[schema.label_column(cond, level)] or not (0 <= x < g.cols and 0 <= y < g.rows)
                or rng.random() < cfg.missing_coord_rate):
            return
        rows.append({"study_id": 0, "series_id": plan.series_id, "instance_number": plan.instance_numbers[i],
                     "condition": cond, "level": level, "x": round(x, 6), "y": round(y, 6)})

    for cond in schema.CONDITIONS:
        info = schema.CONDITION_INFO[cond]
        candidates = by_desc.get(info.series, [])
        if not candidates:
            continue
        if info.group == "spinal":
            plan = candidates[0]
            # All five canal points on the slice nearest the canal as a whole; a level whose canal has
            # drifted out of that slice (a scoliotic or rotated spine) goes on its own nearest slice.
            canal = [a.canal_point(li) for li in range(5)]
            mid = nearest_slice(plan.slices, np.mean(canal, axis=0))[0]
            for li, level in enumerate(schema.LEVELS):
                x, y, d = patient_to_pixel(plan.slices[mid], canal[li])
                i = mid
                if abs(float(d)) > 0.6 * a.canal_lr[li]:
                    i, x, y, _ = nearest_slice(plan.slices, canal[li])
                add(plan, i, float(x), float(y), cond, level)
        elif info.group == "foraminal":
            for li, level in enumerate(schema.LEVELS):
                i, x, y, _ = nearest_slice(candidates[0].slices, a.foramen_point(li, info.side))
                add(candidates[0], i, x, y, cond, level)
        else:
            for li, level in enumerate(schema.LEVELS):
                plan, i, x, y, _ = _nearest(candidates, a.recess_point(li, info.side))
                add(plan, i, x, y, cond, level)
    swap = swapped_condition(rng, cfg)
    pair = [r for r in rows if r["condition"] == swap and r["level"] in schema.LEVELS[3:]]
    if len(pair) == 2:
        keys = ("series_id", "instance_number", "x", "y")
        first = {k: pair[0][k] for k in keys}
        pair[0].update({k: pair[1][k] for k in keys})
        pair[1].update(first)
    return rows
