"""The generator's knobs (``SyntheticConfig``), its version and the marker file it leaves in a folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MARKER = ".lsdc_synthetic.json"
GENERATOR_VERSION = 3


@dataclass
class SyntheticConfig:
    """Knobs of the generator; defaults mimic the real data's rates and anatomy.

    Anatomy ranges are drawn uniformly per study, ``*_sd`` deviations per level (and side); angles
    are the largest drawn. ``V1_STYLE`` holds the settings that give generator version 1's fixed
    anatomy (no per-level variation, curvature, rotation, continuous stacks or label noise).
    """

    train_studies: int = 200
    test_studies: int = 10
    seed: int = 0
    workers: int = 2
    voxel_mm: float = 1.0                 # resolution of the painted anatomy
    # Empty label cells, as in the real train.csv: spinal 0.05% and foraminal 0.25% of cells, subarticular
    # 2.6%, almost always both sides of a level (252 cells in pairs against 13 one-sided); 9.4% of studies.
    empty_spinal_rate: float = 0.0005     # per spinal cell
    empty_foraminal_rate: float = 0.0025  # per foraminal cell
    empty_axial_rate: float = 0.058       # chance a study's top 1-3 levels have no subarticular label, both sides
    empty_one_side_rate: float = 0.0007   # per subarticular cell, one side only
    missing_series_rate: float = 0.02     # chance a study lacks one sagittal series
    extra_t1_rate: float = 0.02           # chance of a second Sagittal T1
    split_axial_rate: float = 0.16        # chance the axial slices come as two or three series
    no_coords_rate: float = 0.01          # chance a training study has no coordinates at all
    missing_coord_rate: float = 0.005     # chance a labeled cell has no coordinate row
    noise: float = 0.035                  # Rician noise, relative to the brightest tissue
    bias: float = 0.25                    # amplitude of the smooth bias field
    # Pixel spacing (mm) drawn uniformly: medians 0.58 (Sagittal T2), 0.68 (Sagittal T1) and 0.43 (Axial T2)
    # as in the real files; the image side is the field of view over the spacing, in steps of 32 pixels.
    sagittal_t2_pixel_mm: tuple[float, float] = (0.45, 0.72)
    sagittal_t1_pixel_mm: tuple[float, float] = (0.52, 0.84)
    axial_pixel_mm: tuple[float, float] = (0.33, 0.53)
    sagittal_fov_mm: tuple[float, float] = (220.0, 290.0)
    axial_fov_mm: tuple[float, float] = (150.0, 210.0)
    # Instance order: real Sagittal T1 series put a level's left foramen on the higher instance number in 64.1%
    # of left/right pairs (numbered from the patient's right); 12.4% of real axial series run bottom-up.
    sagittal_right_first_rate: float = 0.641
    axial_inferior_first_rate: float = 0.124
    # Anatomy: where foramina and recesses sit relative to the canal.
    canal_ap_mm: tuple[float, float] = (5.5, 8.5)     # dural sac AP radius (mm)
    canal_lr_mm: tuple[float, float] = (8.5, 12.5)    # dural sac left-right radius (mm)
    canal_level_sd: float = 0.07          # per-level relative deviation of both canal radii
    disc_h_mm: tuple[float, float] = (7.0, 13.0)      # disc height per level, before the level profile
    foramen_mm: tuple[float, float] = (16.0, 24.0)    # person mean lateral distance canal centre -> foramen
    foramen_trend_mm: float = 0.8         # foramina sit this much further out per level downwards
    foramen_level_sd_mm: float = 1.6      # per-level deviation of the foramen distance (both sides)
    foramen_side_sd_mm: float = 1.3       # per-level-and-side deviation of the foramen distance
    foramen_shift_sd_mm: float = 1.5      # per-level-and-side AP and SI shift of the foramen
    recess_frac: tuple[float, float] = (0.55, 0.88)   # recess lateral distance / canal LR radius, per study
    recess_sd: float = 0.07               # per-level-and-side deviation of that fraction
    recess_shift_sd_mm: float = 1.0       # per-level-and-side AP and SI shift of the recess
    scoliosis_max_deg: float = 15.0       # largest Cobb-like angle (L1 vs S1 tilt); drawn as max * U(0,1)^2
    scoliosis_twist: float = 0.35         # apical vertebral axial rotation, as a share of the Cobb angle
    patient_roll_deg: float = 6.0         # patient rotation about the scanner's z (rolled onto one side)
    patient_yaw_deg: float = 4.0          # ... about the scanner's y (lying askew on the table)
    patient_pitch_deg: float = 4.0        # ... about the scanner's x (head end raised or lowered)
    # Acquisition.
    axial_stack_rate: float = 0.3         # chance of one continuous axial stack over several levels
    # Label noise, training studies only (test_solution.csv stays clean).
    grade_noise_rate: float = 0.04        # share of labeled cells moved one severity step
    coord_noise_mm: float = 0.8           # annotation noise (standard deviation per axis)
    coord_outlier_rate: float = 0.04      # share of points off by coord_outlier_mm instead
    coord_outlier_mm: tuple[float, float] = (3.0, 6.0)
    level_swap_rate: float = 0.015        # chance a study has one condition's L4/L5 and L5/S1 points swapped


# Generator version 1's anatomy and labels: set these to get the old, nearly fixed anatomy.
V1_STYLE: dict[str, Any] = {
    "canal_ap_mm": (6.5, 8.0), "canal_lr_mm": (9.5, 11.5), "canal_level_sd": 0.0, "disc_h_mm": (8.0, 11.5),
    "foramen_mm": (18.0, 22.0), "foramen_trend_mm": 0.0, "foramen_level_sd_mm": 0.0,
    "foramen_side_sd_mm": 0.0, "foramen_shift_sd_mm": 0.0, "recess_frac": (0.72, 0.72), "recess_sd": 0.0,
    "recess_shift_sd_mm": 0.0, "scoliosis_max_deg": 0.0, "patient_roll_deg": 0.0, "patient_yaw_deg": 0.0,
    "patient_pitch_deg": 0.0, "axial_stack_rate": 0.0, "grade_noise_rate": 0.0, "coord_outlier_rate": 0.0,
    "level_swap_rate": 0.0,
}
