"""One study: its anatomy and acquisition simulated from one seed, then painted, rendered, written as
DICOM and labeled (a process-pool task)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsdc import schema
from lsdc.synthetic.acquisition import (
    SeriesPlan,
    contrast_volume,
    plan_axial,
    plan_sagittal,
    render_series,
    unique_ints,
)
from lsdc.synthetic.anatomy import Anatomy, make_anatomy
from lsdc.synthetic.config import SyntheticConfig
from lsdc.synthetic.dicom_writing import write_series
from lsdc.synthetic.labels import annotate_coordinates, empty_cells, noisy_grades
from lsdc.synthetic.painting import paint_study


@dataclass
class Study:
    """One study before rendering: its anatomy, its series, and the random streams still to use."""

    anatomy: Anatomy
    plans: list[SeriesPlan]
    image_rng: np.random.Generator
    label_rng: np.random.Generator


def simulate_study(seed: int, cfg: SyntheticConfig) -> Study:
    """The anatomy and the acquisition of one study (cheap: nothing is painted or rendered).

    Anatomy, acquisition, images and labels draw from separate streams, so the label noise can be
    switched off without moving a pixel, and tests can rebuild the truth behind a written study.
    """
    streams = np.random.SeedSequence(seed).spawn(4)
    rng_anatomy, rng, rng_image, rng_label = (np.random.default_rng(s) for s in streams)
    a = make_anatomy(rng_anatomy, cfg)
    ids = iter(unique_ints(rng, 10**8, 4 * 10**9, 8))
    sag_contrast = "STIR" if rng.random() < 0.3 else "T2"
    plans = [plan_sagittal(rng, a, cfg, next(ids), schema.SAG_T1, "T1"),
             plan_sagittal(rng, a, cfg, next(ids), schema.SAG_T2, sag_contrast)]
    if rng.random() < cfg.extra_t1_rate:
        plans.append(plan_sagittal(rng, a, cfg, next(ids), schema.SAG_T1, "T1"))
    plans += plan_axial(rng, a, cfg, [next(ids) for _ in range(3)])
    if rng.random() < cfg.missing_series_rate:
        drop = schema.SAG_T1 if rng.random() < 0.5 else schema.SAG_T2
        plans = [p for p in plans if p.description != drop]
    return Study(a, plans, rng_image, rng_label)



@dataclass
class StudyResult:
    """What the CSVs need from one generated study."""

    study_id: int
    labels: dict[str, str]                  # label column -> severity or "" when empty
    series: list[tuple[int, str]]           # (series_id, description)
    coords: list[dict[str, Any]]


def generate_study(args: tuple[int, int, bool, SyntheticConfig, str]) -> StudyResult:
    """Generate, render and write one study (a process-pool task)."""
    study_id, seed, is_test, cfg, images_dir = args
    study = simulate_study(seed, cfg)
    a, plans, rng = study.anatomy, study.plans, study.image_rng
    vol = paint_study(a, cfg.voxel_mm)

    # Sorted: a set of strings iterates in an order that changes from process to process (hash seed).
    volumes = {c: contrast_volume(vol, c, rng) for c in sorted({p.contrast for p in plans})}
    scale = float(rng.uniform(400, 3500))
    with_spacing_tags = not (is_test and rng.random() < 0.3)
    rescale = rng.random() < 0.4
    for number, plan in enumerate(plans, start=1):
        images = render_series(plan, volumes[plan.contrast], vol, rng, cfg, scale)
        write_series(Path(images_dir) / str(study_id) / str(plan.series_id), plan, images, study_id, number,
                     with_spacing_tags, rescale)

    labels, coords = annotate_study(study, cfg, is_test)
    return StudyResult(study_id, labels, [(p.series_id, p.description) for p in plans], coords)


def annotate_study(study: Study, cfg: SyntheticConfig, is_test: bool) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """train.csv cells and coordinate rows of one study: clean for test studies, noisy for training ones."""
    rng, a = study.label_rng, study.anatomy
    empty = empty_cells(rng, cfg)
    grades = a.severity if is_test else noisy_grades(a.severity, rng, cfg.grade_noise_rate)
    labels = {schema.label_column(cond, level): "" if (cond, level) in empty else schema.SEVERITIES[sev]
              for (cond, level), sev in grades.items()}
    coords: list[dict[str, Any]] = []
    if not is_test and rng.random() >= cfg.no_coords_rate:
        coords = annotate_coordinates(a, study.plans, labels, rng, cfg)
    return labels, coords
