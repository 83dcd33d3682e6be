"""A synthetic stand-in for the competition data, in exactly the competition's files and formats.

Each study is one coherent 3D lumbar spine: vertebral bodies and discs L1 to S1 on a lordotic curve,
possibly with a scoliotic lateral curve and axial twist, the dural sac behind them, neural foramina
and subarticular recesses on each side whose distance from the canal varies from person to person,
level to level and side to side. The spine is built in the patient's own (body) axes and placed in
the scanner slightly rotated, so the slices, planned in scanner terms as a technologist would
(sagittal stacks along left-right, axial blocks angled through each disc or one continuous stack
over several levels), never line up exactly with the anatomy. Every label is drawn where it belongs:
spinal canal stenosis narrows the canal at its level, foraminal narrowing one side's foramen,
subarticular stenosis one side's recess. The anatomy is painted into a label volume in body
coordinates, turned into T1 / T2 / STIR contrast, and sampled through each slice's real DICOM
geometry (world -> body is a rotation, so the pixel -> voxel map stays affine), with scanner-like
variation, a bias field and Rician noise. Training labels carry the real data's kinds of noise
(grades one step off, coordinates a few mm off, the odd L4/L5 - L5/S1 swap); the test labels are clean.
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid
from scipy import ndimage

from lsdc import schema
from lsdc.config import to_dict
from lsdc.dicom import write_slice
from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry, nearest_slice, patient_to_pixel
from lsdc.io import write_csv, write_text
from lsdc.progress import progress

log = logging.getLogger(__name__)

MARKER = ".lsdc_synthetic.json"
GENERATOR_VERSION = 3
SIDES = ("left", "right")
SIDE_SIGN = {"left": 1.0, "right": -1.0}  # LPS: +x is the patient's left

# Class mix of the real train.csv per group (Normal/Mild, Moderate, Severe).
CLASS_MIX: dict[str, tuple[float, float, float]] = {
    "spinal": (0.878, 0.075, 0.048),
    "foraminal": (0.780, 0.181, 0.040),
    "subarticular": (0.714, 0.190, 0.096),
}
# Degeneration is commoner at the lower levels (relative odds of moderate/severe per level).
LEVEL_ODDS = (0.45, 0.65, 1.0, 1.55, 1.35)
# Share of grade flips at the Normal/Mild - Moderate boundary (the rest at Moderate - Severe).
GRADE_FLIP_NM_SHARE = 0.7
# Where a continuous axial stack starts (L1/L2, L2/L3, L3/L4); it always runs down to L5/S1.
STACK_START_P = (0.5, 0.2, 0.3)
# How many of the top levels (from L1/L2 down) lose both subarticular labels in a study that loses some.
EMPTY_AXIAL_LEVELS_P = (0.4, 0.3, 0.3)

# Tissue labels painted into the volume, with (T1, T2, STIR) relative intensities.
AIR, FAT, MUSCLE, MARROW, BONE, NUCLEUS, ANNULUS, CSF, NERVE, LIGAMENT, ORGAN = range(11)
TISSUE_CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00],  # air
        [0.95, 0.70, 0.08],  # fat
        [0.33, 0.22, 0.22],  # muscle
        [0.62, 0.45, 0.25],  # vertebral marrow
        [0.07, 0.07, 0.07],  # cortical bone
        [0.38, 0.82, 0.75],  # disc nucleus
        [0.28, 0.30, 0.28],  # annulus
        [0.14, 1.00, 1.00],  # CSF
        [0.38, 0.35, 0.35],  # nerve roots
        [0.12, 0.10, 0.12],  # ligament / disc bulge / facet hypertrophy (stenotic tissue)
        [0.45, 0.48, 0.42],  # abdominal soft tissue
    ],
    dtype=np.float32,
)
CONTRAST_COLUMN = {"T1": 0, "T2": 1, "STIR": 2}
SEVERITY_FACTOR = (1.0, 0.62, 0.30)  # how much of a structure's calibre is left, by severity


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


# ----------------------------------------------------------------------------- anatomy


def _rotation(roll: float, yaw: float, pitch: float) -> np.ndarray:
    """Body -> world rotation (degrees): pitch about x, then yaw about y, then roll about z."""
    r, y, p = np.deg2rad([roll, yaw, pitch])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


@dataclass
class Anatomy:
    """One patient's lumbar spine, built in body coordinates and posed in the scanner.

    Body coordinates are the patient's own LPS axes in mm; ``pose`` turns them about ``pivot`` (the
    L3/L4 canal point) into the scanner's patient coordinates ("world"), where the DICOM geometry,
    the annotations and the planning landmarks live. The public point and frame methods answer in
    world coordinates; the ``body_*`` ones, used for painting, in body coordinates. Per-level arrays
    run L1/L2 to L5/S1; per-side columns follow ``SIDES``.
    """

    x0: float                     # canal centre x at the apex of the lateral curve
    y0: float                     # canal centre y at the apex of the lordosis
    z_apex: float                 # z of the apex of the lordosis
    curvature: float              # lordosis: y = y0 + k (z - z_apex)^2
    cobb_deg: float               # signed lateral curve: tilt of L1 minus tilt of S1 in the coronal plane
    z_scoliosis: float            # z of the apex of the lateral curve
    twist: float                  # apical axial rotation as a share of the Cobb angle
    canal_ap: np.ndarray          # (5,) canal radii (mm) when normal, per level
    canal_lr: np.ndarray          # (5,)
    disc_z: np.ndarray            # (5,) z of each disc centre, L1/L2 to L5/S1
    body_z: np.ndarray            # (6,) z of each vertebral body centre, L1 to S1
    body_h: np.ndarray            # (6,) body heights
    disc_h: np.ndarray            # (5,) disc heights
    body_depth: float
    body_width: float
    foramen_lat: np.ndarray       # (5, 2) lateral distance of the foramen from the canal centre
    foramen_ap: np.ndarray        # (5, 2) posterior shift of the foramen
    foramen_si: np.ndarray        # (5, 2) superior shift of the foramen
    recess_lat: np.ndarray        # (5, 2) lateral distance of the recess from the canal centre
    recess_ap: np.ndarray         # (5, 2) posterior shift of the recess
    recess_si: np.ndarray         # (5, 2) superior shift of the recess
    pose_deg: tuple[float, float, float]  # patient rotation: (roll about z, yaw about y, pitch about x)
    severity: dict[tuple[str, str], int]  # (condition, level) -> 0/1/2 (drawn even if the label is empty)
    pose: np.ndarray = field(init=False)  # (3, 3) body -> world rotation
    pivot: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.pose = _rotation(*self.pose_deg)
        self.pivot = self.body_centre(self.disc_z[2])

    # -- body coordinates

    def _lateral(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lateral offset of the canal centre and its slope: the coronal tilt grows linearly with z,
        so L1 and S1 differ by exactly the Cobb angle."""
        g = np.deg2rad(self.cobb_deg) / (self.body_z[0] - self.body_z[-1])
        if g == 0:
            return np.zeros_like(z), np.zeros_like(z)
        th = g * (z - self.z_scoliosis)
        return -np.log(np.cos(th)) / g, np.tan(th)

    def _twist(self, z: np.ndarray) -> np.ndarray:
        """Axial rotation (rad) of the vertebrae: largest at the curve's apex, towards its convexity."""
        ends = np.array([self.body_z[0], self.body_z[-1]])
        u, _ = self._lateral(z)
        ue, _ = self._lateral(ends)
        chord = ue[1] + (ue[0] - ue[1]) * (z - ends[1]) / (ends[0] - ends[1])
        return self.twist * 8.0 * (u - chord) / (ends[0] - ends[1])

    def body_centre(self, z: np.ndarray | float) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        u, _ = self._lateral(z)
        y = self.y0 + self.curvature * (z - self.z_apex) ** 2
        return np.stack([self.x0 + u, y, z], axis=-1)

    def body_frame(self, z: np.ndarray | float) -> np.ndarray:
        """(..., 3, 3): rows lateral (patient left), posterior, superior unit vectors at height z."""
        z = np.asarray(z, dtype=float)
        _, su = self._lateral(z)
        t = np.stack([su, 2 * self.curvature * (z - self.z_apex), np.ones_like(z)], axis=-1)
        t /= np.linalg.norm(t, axis=-1, keepdims=True)
        lat = np.array([1.0, 0.0, 0.0]) - t[..., :1] * t
        lat /= np.linalg.norm(lat, axis=-1, keepdims=True)
        post = np.cross(t, lat)
        w = self._twist(z)[..., None]
        lat, post = np.cos(w) * lat + np.sin(w) * post, -np.sin(w) * lat + np.cos(w) * post
        return np.stack([lat, post, t], axis=-2)

    def canal_radii(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Normal canal radii (AP, LR) at height z, interpolated between the discs."""
        zs = self.disc_z[::-1]
        return np.interp(z, zs, self.canal_ap[::-1]), np.interp(z, zs, self.canal_lr[::-1])

    def body_canal_point(self, level: int) -> np.ndarray:
        return self.body_centre(self.disc_z[level])

    def body_disc_centre(self, level: int) -> np.ndarray:
        z = self.disc_z[level]
        return self.body_centre(z) - self.body_frame(z)[1] * (self.canal_ap[level] + 2.5 + self.body_depth / 2)

    def body_foramen_point(self, level: int, side: str) -> np.ndarray:
        z, si = self.disc_z[level], SIDES.index(side)
        f = self.body_frame(z)
        return (self.body_centre(z) + SIDE_SIGN[side] * self.foramen_lat[level, si] * f[0]
                + (self.foramen_ap[level, si] - 1.5) * f[1] + (self.foramen_si[level, si] + 2.5) * f[2])

    def body_recess_point(self, level: int, side: str) -> np.ndarray:
        z, si = self.disc_z[level], SIDES.index(side)
        f = self.body_frame(z)
        return (self.body_centre(z) + SIDE_SIGN[side] * self.recess_lat[level, si] * f[0]
                + (0.35 * self.canal_ap[level] + self.recess_ap[level, si]) * f[1] + self.recess_si[level, si] * f[2])

    # -- world (scanner) coordinates

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - self.pivot) @ self.pose.T + self.pivot

    def frame(self, level: int) -> np.ndarray:
        """Rows: lateral (patient left), posterior, superior unit vectors at a disc, in world axes."""
        return self.body_frame(self.disc_z[level]) @ self.pose.T

    def canal_point(self, level: int) -> np.ndarray:
        """Canal centre at a disc: where spinal canal stenosis is annotated."""
        return self.to_world(self.body_canal_point(level))

    def disc_centre(self, level: int) -> np.ndarray:
        return self.to_world(self.body_disc_centre(level))

    def foramen_point(self, level: int, side: str) -> np.ndarray:
        return self.to_world(self.body_foramen_point(level, side))

    def recess_point(self, level: int, side: str) -> np.ndarray:
        return self.to_world(self.body_recess_point(level, side))


def draw_labels(rng: np.random.Generator) -> dict[tuple[str, str], int]:
    """Severity per (condition, level) with the real class mix, lower levels worse, per-study latent."""
    latent = float(np.exp(0.6 * rng.normal()))
    out = {}
    for cond in schema.CONDITIONS:
        p_norm, p_mod, p_sev = CLASS_MIX[schema.CONDITION_INFO[cond].group]
        for li, level in enumerate(schema.LEVELS):
            odds = LEVEL_ODDS[li] * latent / 1.19  # 1.19 ~ E[latent]: keeps the marginal mix
            mod, sev = min(p_mod * odds, 0.6), min(p_sev * odds, 0.35)
            out[(cond, level)] = int(rng.choice(3, p=[1 - mod - sev, mod, sev]))
    return out


def _small_angle(rng: np.random.Generator, max_deg: float) -> float:
    """A signed angle: mostly small, reaching ``max_deg`` in a few percent of studies."""
    return float(max_deg * np.clip(rng.normal(0.0, 0.4), -1.0, 1.0))


def make_anatomy(rng: np.random.Generator, cfg: SyntheticConfig | None = None) -> Anatomy:
    """One random spine. The draws are the same whatever the knobs, so a knob set to zero changes
    only its own variation."""
    cfg = cfg or SyntheticConfig()
    body_h = rng.uniform(24, 30, 6) * np.array([1.0, 1.02, 1.04, 1.05, 1.04, 1.1])
    disc_h = rng.uniform(*cfg.disc_h_mm, 5) * np.array([0.85, 0.95, 1.0, 1.05, 0.9])
    # Stack from L1 downward; z of L1's centre is random (table position).
    z = rng.uniform(-250, 50)
    body_z, disc_z = [], []
    for i in range(6):
        if i > 0:
            z -= body_h[i - 1] / 2 + disc_h[i - 1] / 2
            disc_z.append(z)
            z -= disc_h[i - 1] / 2 + body_h[i] / 2
        body_z.append(z)
    body_z_arr, disc_z_arr = np.array(body_z), np.array(disc_z)

    def dev(sd: float, shape: int | tuple[int, ...]) -> np.ndarray:
        return np.clip(rng.normal(0.0, 1.0, shape), -2.5, 2.5) * sd

    canal_ap = rng.uniform(*cfg.canal_ap_mm) * (1 + dev(cfg.canal_level_sd, 5))
    canal_lr = rng.uniform(*cfg.canal_lr_mm) * (1 + dev(cfg.canal_level_sd, 5))
    foramen_lat = (rng.uniform(*cfg.foramen_mm) + cfg.foramen_trend_mm * (np.arange(5) - 2)[:, None]
                   + dev(cfg.foramen_level_sd_mm, (5, 1)) + dev(cfg.foramen_side_sd_mm, (5, 2)))
    foramen_lat = np.clip(foramen_lat, canal_lr[:, None] + 5.0, 30.0)  # outside the canal, inside the arch
    foramen_ap = dev(cfg.foramen_shift_sd_mm, (5, 2))
    foramen_si = dev(cfg.foramen_shift_sd_mm, (5, 2))
    frac = np.clip(rng.uniform(*cfg.recess_frac) + dev(cfg.recess_sd, (5, 2)), 0.5, 0.92)
    recess_ap = dev(cfg.recess_shift_sd_mm, (5, 2))
    recess_si = dev(cfg.recess_shift_sd_mm, (5, 2))
    cobb = cfg.scoliosis_max_deg * rng.uniform() ** 2 * rng.choice([-1.0, 1.0])
    z_scoliosis = rng.uniform(disc_z_arr[3], disc_z_arr[1])
    pose = (_small_angle(rng, cfg.patient_roll_deg), _small_angle(rng, cfg.patient_yaw_deg),
            _small_angle(rng, cfg.patient_pitch_deg))
    return Anatomy(
        x0=float(rng.uniform(-12, 12)),
        y0=float(rng.uniform(-20, 40)),
        z_apex=float(disc_z_arr[2] + rng.uniform(-10, 10)),
        curvature=float(rng.uniform(0.0012, 0.0028)),
        cobb_deg=float(cobb),
        z_scoliosis=float(z_scoliosis),
        twist=cfg.scoliosis_twist,
        canal_ap=canal_ap,
        canal_lr=canal_lr,
        disc_z=disc_z_arr,
        body_z=body_z_arr,
        body_h=body_h,
        disc_h=disc_h,
        body_depth=float(rng.uniform(31, 37)),
        body_width=float(rng.uniform(46, 54)),
        foramen_lat=foramen_lat,
        foramen_ap=foramen_ap,
        foramen_si=foramen_si,
        recess_lat=np.maximum(frac * canal_lr[:, None], 5.0),
        recess_ap=recess_ap,
        recess_si=recess_si,
        pose_deg=pose,
        severity=draw_labels(rng),
    )


# ----------------------------------------------------------------------------- painting


@dataclass
class Volume:
    """A label volume on a regular grid in body coordinates: voxel (i, j, k) sits at origin + vox * (i, j, k);
    world points map to body ones through the anatomy's pose (world = pose (body - pivot) + pivot)."""

    origin: np.ndarray
    vox: float
    labels: np.ndarray  # uint8 (nx, ny, nz)
    pose: np.ndarray = field(default_factory=lambda: np.eye(3))
    pivot: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Voxel index (float) of world points (..., 3)."""
        body = (np.asarray(points) - self.pivot) @ self.pose + self.pivot
        return (body - self.origin) / self.vox

    def direction_to_index(self, v: np.ndarray) -> np.ndarray:
        """Voxel steps of a world direction (..., 3) of one mm."""
        return (np.asarray(v) @ self.pose) / self.vox


def _box(vol: Volume, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice, np.ndarray]:
    """Index box around a sphere and the body coordinates of its voxels (..., 3)."""
    lo = np.floor((centre - radius - vol.origin) / vol.vox).astype(int)
    hi = np.ceil((centre + radius - vol.origin) / vol.vox).astype(int) + 1
    lo = np.clip(lo, 0, vol.labels.shape)
    hi = np.clip(hi, 0, vol.labels.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = [(vol.origin[d] + vol.vox * np.arange(lo[d], hi[d])).astype(np.float32) for d in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return sl[0], sl[1], sl[2], pts


def paint_ellipsoid(vol: Volume, centre: np.ndarray, frame: np.ndarray, radii: tuple[float, float, float],
                    label: int, power: float = 2.0) -> None:
    """Set ``label`` inside a (super-)ellipsoid with semi-axes ``radii`` along the rows of ``frame`` (body)."""
    r = np.asarray(radii, dtype=float)
    sx, sy, sz, pts = _box(vol, centre, float(r.max()))
    if pts.size == 0:
        return
    local = (pts - centre.astype(np.float32)) @ (frame.T / r).astype(np.float32)
    inside = (np.abs(local) ** power).sum(-1) <= 1.0
    vol.labels[sx, sy, sz][inside] = label


def _index_range(axis0: float, vox: float, n: int, lo: float, hi: float) -> tuple[int, int]:
    """Voxel index range [a, b) covering body coordinates [lo, hi] along one axis."""
    a = int(np.clip(np.floor((lo - axis0) / vox), 0, n))
    b = int(np.clip(np.ceil((hi - axis0) / vox) + 1, 0, n))
    return a, b


def paint_canal(vol: Volume, a: Anatomy) -> None:
    """Epidural fat, dural sac (CSF) narrowed at stenotic discs, stenotic tissue and nerve roots.

    Each voxel is placed in the cross-section of the canal at its own height (lateral and posterior
    coordinates in the local frame), inside a box around the canal only.
    """
    nx, ny, nz = vol.labels.shape
    k0, k1 = _index_range(vol.origin[2], vol.vox, nz, a.body_z[-1] + 5, a.body_z[0] + 60)  # the sac ends in S1
    zs = vol.origin[2] + vol.vox * np.arange(k0, k1)
    c = a.body_centre(zs)
    f = a.body_frame(zs).astype(np.float32)
    r_ap0, r_lr0 = a.canal_radii(zs)
    pad = float(max(r_ap0.max(), r_lr0.max())) + 8.0
    i0, i1 = _index_range(vol.origin[0], vol.vox, nx, c[:, 0].min() - pad, c[:, 0].max() + pad)
    j0, j1 = _index_range(vol.origin[1], vol.vox, ny, c[:, 1].min() - pad, c[:, 1].max() + pad)
    xs = (vol.origin[0] + vol.vox * np.arange(i0, i1)).astype(np.float32)
    ys = (vol.origin[1] + vol.vox * np.arange(j0, j1)).astype(np.float32)
    dx = xs[:, None, None] - c[None, None, :, 0].astype(np.float32)
    dy = ys[None, :, None] - c[None, None, :, 1].astype(np.float32)
    dl = dx * f[:, 0, 0] + dy * f[:, 0, 1]   # local lateral and posterior coordinates
    dp = dx * f[:, 1, 0] + dy * f[:, 1, 1]
    cond = schema.condition_for("spinal")
    narrowing = np.zeros_like(zs)
    for li, level in enumerate(schema.LEVELS):
        lost = 1.0 - SEVERITY_FACTOR[a.severity[(cond, level)]]
        narrowing = np.maximum(narrowing, lost * np.exp(-(((zs - a.disc_z[li]) / (0.55 * a.disc_h[li] + 2.5)) ** 2)))
    narrowing = narrowing.astype(np.float32)
    r_ap0, r_lr0 = r_ap0.astype(np.float32), r_lr0.astype(np.float32)
    r_ap, r_lr = r_ap0 * (1 - narrowing), r_lr0 * (1 - 0.45 * narrowing)
    normal = (dl / r_lr0) ** 2 + (dp / r_ap0) ** 2 <= 1
    fat = (dl / (r_lr0 + 2.5)) ** 2 + (dp / (r_ap0 + 2.0)) ** 2 <= 1
    sac = (dl / r_lr) ** 2 + (dp / r_ap) ** 2 <= 1
    lab = vol.labels[i0:i1, j0:j1, k0:k1]
    lab[fat] = FAT
    lab[normal] = LIGAMENT          # what the narrowing takes, bulging disc and thick ligament
    lab[sac] = CSF
    # A few cauda equina roots: thin dark strands inside the sac, in its posterior half.
    for off_l, off_p in ((-3.0, 2.5), (3.0, 2.5), (-1.2, 4.0), (1.2, 4.0)):
        root = ((dl - off_l) ** 2 + (dp - off_p * (1 - narrowing)) ** 2 <= 0.8 ** 2) & sac
        lab[root] = NERVE


def _torso_plane(a: Anatomy, xs: np.ndarray, ys: np.ndarray, y_mid: float) -> np.ndarray:
    """One axial plane of the torso: abdominal soft tissue in front, back muscles and psoas, a fat
    layer under the skin, air behind; x relative to the canal."""
    dx = (xs - a.x0)[:, None]
    dyb = (ys - y_mid)[None, :]
    skin = 70.0
    back = (dyb > -10) & (np.abs(dx) < 48)
    muscle = back & (dyb < skin - 14)
    fat = (dyb >= skin - 14) & (dyb < skin)
    air = dyb >= skin
    psoas = ((np.abs(dx) - 30) ** 2 / 12 ** 2 + (dyb + 35) ** 2 / 14 ** 2) <= 1
    shape = (len(xs), len(ys))
    plane = np.full(shape, ORGAN, dtype=np.uint8)
    plane[np.broadcast_to(muscle | psoas, shape)] = MUSCLE
    plane[np.broadcast_to(fat, shape)] = FAT
    plane[np.broadcast_to(air, shape)] = AIR
    return plane


def paint_study(a: Anatomy, vox: float) -> Volume:
    """Paint the whole lumbar region of one patient into a label volume (body coordinates)."""
    top, bottom = a.body_z[0] + 45, a.body_z[-1] - 45
    y_mid = float(a.body_centre(a.disc_z[2])[1])
    zs_probe = np.linspace(bottom, top, 64)
    cx = a.body_centre(zs_probe)[:, 0]
    origin = np.array([cx.min() - 52, y_mid - 135, bottom])
    shape = np.ceil(np.array([cx.max() - cx.min() + 104, 225, top - bottom]) / vox).astype(int) + 1
    vol = Volume(origin=origin, vox=vox, labels=np.empty(tuple(shape), dtype=np.uint8), pose=a.pose, pivot=a.pivot)
    nx, ny, nz = shape
    # The torso follows the lateral curve: each axial plane is the same plane shifted by whole voxels.
    zs = origin[2] + vox * np.arange(nz)
    shift = np.round((a.body_centre(zs)[:, 0] - a.x0) / vox).astype(int)
    margin = int(np.abs(shift).max()) + 1
    xs_wide = origin[0] + vox * np.arange(-margin, nx + margin)
    plane = _torso_plane(a, xs_wide, origin[1] + vox * np.arange(ny), y_mid)
    for k in range(nz):
        vol.labels[:, :, k] = plane[margin - shift[k]: margin - shift[k] + nx]

    for bi in range(6):  # vertebral bodies: cortical shell, marrow inside
        z = a.body_z[bi]
        f = a.body_frame(z)
        cen = a.body_centre(z)
        ap, lr = (float(v) for v in a.canal_radii(z))
        c = cen - f[1] * (ap + 2.5 + a.body_depth / 2)
        half = (a.body_width / 2, a.body_depth / 2, a.body_h[bi] / 2)
        paint_ellipsoid(vol, c, f, half, BONE, power=3.0)
        paint_ellipsoid(vol, c, f, tuple(h - 1.6 for h in half), MARROW, power=3.0)
        # Posterior arch: pedicles (seen on parasagittal slices above and below each foramen, so they
        # sit where the neighbouring foramina do), lamina and spinous process behind the canal.
        near = [li for li in (bi - 1, bi) if 0 <= li < 5]
        for si, side in enumerate(SIDES):
            lat = float(np.mean(a.foramen_lat[near, si]))
            post = float(np.mean(a.foramen_ap[near, si]))
            pc = cen + SIDE_SIGN[side] * lat * f[0] + (post - 0.5) * f[1] + 1.5 * f[2]
            paint_ellipsoid(vol, pc, f, (6.0, 8.0, 0.32 * a.body_h[bi]), BONE)
            paint_ellipsoid(vol, pc, f, (4.5, 6.5, 0.32 * a.body_h[bi] - 1.5), MARROW)
        paint_ellipsoid(vol, cen + (ap + 6) * f[1] + 3 * f[2], f, (lr + 4, 4.0, 0.35 * a.body_h[bi]), BONE)
        paint_ellipsoid(vol, cen + (ap + 26) * f[1] + 2 * f[2], f, (3.5, 18.0, 7.0), BONE)
    for li, level in enumerate(schema.LEVELS):  # discs, foramina, facets and recesses
        z = a.disc_z[li]
        f = a.body_frame(z)
        cen = a.body_centre(z)
        c = a.body_disc_centre(li)
        half = (a.body_width / 2 - 1, a.body_depth / 2 + 0.8, a.disc_h[li] / 2)
        paint_ellipsoid(vol, c, f, half, ANNULUS, power=2.5)
        paint_ellipsoid(vol, c + 2 * f[1], f, (half[0] * 0.55, half[1] * 0.55, half[2] * 0.6), NUCLEUS)
        for si, side in enumerate(SIDES):
            s = SIDE_SIGN[side]
            # Facet joint behind the foramen and lateral to the recess: grows as the recess narrows.
            sev_sub = a.severity[(schema.condition_for("subarticular", side), level)]
            lat = a.recess_lat[li, si] + 0.55 * (a.foramen_lat[li, si] - a.recess_lat[li, si])
            facet_c = (cen + s * lat * f[0] + (a.canal_ap[li] + 3.0 + 0.5 * a.foramen_ap[li, si]) * f[1]
                       + 0.5 * a.foramen_si[li, si] * f[2])
            grow = 1.0 + 0.45 * sev_sub
            paint_ellipsoid(vol, facet_c, f, (6.0 * grow, 6.0 * grow, 9.0), BONE)
            # Foramen: a keyhole of fat with the exiting root, narrowed by the severity.
            sev_for = a.severity[(schema.condition_for("foraminal", side), level)]
            k = SEVERITY_FACTOR[sev_for]
            fc = a.body_foramen_point(li, side)
            paint_ellipsoid(vol, fc, f, (6.0, 6.5, 8.5), LIGAMENT)
            paint_ellipsoid(vol, fc - (1 - k) * 2.5 * f[1], f, (5.5, 6.0 * k, 8.0 * k), FAT)
            paint_ellipsoid(vol, fc + 8.0 * k * 0.45 * f[2], f, (5.0, 1.8, 1.8 * min(1.0, 1.3 * k)), NERVE)
    paint_canal(vol, a)
    for li, level in enumerate(schema.LEVELS):  # lateral recesses: CSF pockets narrowed by the facet
        f = a.body_frame(a.disc_z[li])
        for side in SIDES:
            s = SIDE_SIGN[side]
            sev = a.severity[(schema.condition_for("subarticular", side), level)]
            k = SEVERITY_FACTOR[sev]
            rc = a.body_recess_point(li, side)
            paint_ellipsoid(vol, rc, f, (4.0, 3.6, 6.0), LIGAMENT)
            paint_ellipsoid(vol, rc - s * (1 - k) * 2.0 * f[0], f, (3.6 * k, 3.2 * k, 5.5), CSF)
            if sev:  # the hypertrophic facet and ligament push into that side of the sac
                grow = 1.0 - k
                paint_ellipsoid(vol, rc + s * 2.0 * f[0] + 2.0 * f[1], f, (2.0 + 5.0 * grow, 2.0 + 4.0 * grow, 6.0),
                                LIGAMENT)
    return vol


# ----------------------------------------------------------------------------- acquisition


@dataclass
class SeriesPlan:
    """One series to write: its description, contrast and the geometry of each slice."""

    series_id: int
    description: str
    contrast: str
    slices: list[SliceGeometry]
    slice_thickness: float
    spacing_between: float
    instance_numbers: list[int] = field(default_factory=list)


def _unique_ints(rng: np.random.Generator, lo: int, hi: int, n: int) -> list[int]:
    """``n`` distinct integers in [lo, hi), without materialising the range."""
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < n:
        v = int(rng.integers(lo, hi))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _instance_numbers(rng: np.random.Generator, n: int) -> list[int]:
    """An axial series' instance numbers: usually 1..n; sometimes starting elsewhere or with gaps, as in real
    axial series (real sagittal series are numbered 1..n)."""
    start = 1 if rng.random() < 0.85 else int(rng.integers(2, 40))
    if rng.random() < 0.08:
        steps = rng.integers(1, 4, size=n)
        steps[0] = 0
        return [start + int(s) for s in np.cumsum(steps)]
    return list(range(start, start + n))


def _image_side(rng: np.random.Generator, pixel_mm: tuple[float, float], fov_mm: tuple[float, float]
                ) -> tuple[int, float]:
    """(pixels, pixel spacing) of an image side: a field of view and spacing drawn from their ranges, the side
    rounded to a multiple of 32 pixels as scanners' matrices are, the spacing then the field over the side."""
    fov = float(rng.uniform(*fov_mm))
    side = max(32, int(round(fov / float(rng.uniform(*pixel_mm)) / 32)) * 32)
    return side, fov / side


def _plane_axes(normal: np.ndarray, up_hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions of an image plane with the given normal."""
    n = normal / np.linalg.norm(normal)
    col = up_hint - np.dot(up_hint, n) * n
    col /= np.linalg.norm(col)
    row = np.cross(col, n)
    return row, col


def plan_sagittal(rng: np.random.Generator, a: Anatomy, cfg: SyntheticConfig, series_id: int,
                  description: str, contrast: str) -> SeriesPlan:
    """A sagittal stack planned in scanner terms: planes along the scanner's left-right axis (a few
    degrees of yaw), centred on the canal and wide enough to hold both sides' foramina."""
    n = int(rng.integers(15, 21))
    spacing = float(rng.uniform(3.3, 5.0))
    pixel_mm = cfg.sagittal_t1_pixel_mm if description == schema.SAG_T1 else cfg.sagittal_t2_pixel_mm
    rows, ps = _image_side(rng, pixel_mm, cfg.sagittal_fov_mm)
    cols = int(rows * rng.choice([1.0, 1.0, 0.85, 1.15])) // 2 * 2
    yaw = np.deg2rad(rng.uniform(-3, 3))
    normal = np.array([-np.cos(yaw), -np.sin(yaw), 0.0])   # towards the patient's right, like [0,1,0,0,0,-1]
    row = np.array([-np.sin(yaw), np.cos(yaw), 0.0])        # posterior
    col = np.array([0.0, 0.0, -1.0])                        # down
    canal = np.array([a.canal_point(li) for li in range(5)])
    centre = canal.mean(0) + np.array([rng.uniform(-3, 3), rng.uniform(-25, 5), rng.uniform(-12, 12)])
    shift = float(rng.uniform(-0.4, 0.4))
    # The technologist covers both sides' foramina with a few mm to spare.
    foramina = np.array([a.foramen_point(li, s) for li in range(5) for s in SIDES])
    need = float(np.abs((foramina - centre) @ normal).max()) + 4.0 + abs(shift) * spacing
    if (n - 1) / 2 * spacing < need:
        spacing = min(5.5, 2 * need / (n - 1))
        n = max(n, min(24, int(np.ceil(2 * need / spacing)) + 1))
    offsets = (np.arange(n) - (n - 1) / 2 + shift) * spacing
    descending = rng.random() < cfg.sagittal_right_first_rate   # instances from the patient's right first
    geoms = []
    for off in (offsets[::-1] if descending else offsets):
        c = centre + off * normal
        ipp = c - row * ps * (cols - 1) / 2 - col * ps * (rows - 1) / 2
        geoms.append(SliceGeometry(tuple(ipp), (*row, *col), (ps, ps), rows, cols))
    return SeriesPlan(series_id, description, contrast, geoms, float(rng.uniform(3.0, spacing)), spacing,
                      list(range(1, n + 1)))


def _axial_block(centre: np.ndarray, normal: np.ndarray, offsets: np.ndarray, ps: float,
                 size: int) -> list[SliceGeometry]:
    """Parallel square axial slices at ``offsets`` (mm, superior first) along ``normal`` from ``centre``."""
    row, col = _plane_axes(normal, np.array([0.0, 1.0, 0.0]))  # col ~ posterior, row ~ patient left
    if np.dot(row, [1.0, 0.0, 0.0]) < 0:
        row = -row
    geoms = []
    for off in offsets:
        c = centre + off * normal
        ipp = c - row * ps * (size - 1) / 2 - col * ps * (size - 1) / 2
        geoms.append(SliceGeometry(tuple(ipp), (*row, *col), (ps, ps), size, size))
    return geoms


def plan_axial(rng: np.random.Generator, a: Anatomy, cfg: SyntheticConfig,
               series_ids: list[int]) -> list[SeriesPlan]:
    """Axial T2 slices, grouped into one to three series.

    Either a block angled through each disc (3 to 7 slices each), or (``axial_stack_rate``) one
    continuous stack of parallel slices from L1/L2, L2/L3 or L3/L4 down through L5/S1, angled
    between the spine's mean direction and the scanner's axial plane, with per-disc blocks for the
    discs above it. Planned on the anatomy as it lies in the scanner (world coordinates).
    """
    canal = np.array([a.canal_point(li) for li in range(5)])
    tangents = np.array([a.frame(li)[2] for li in range(5)])
    stack = rng.random() < cfg.axial_stack_rate
    start = int(rng.choice(3, p=STACK_START_P)) if stack else 5
    spacing = float(rng.uniform(3.0, 6.0)) if stack else float(rng.uniform(3.5, 5.0))
    base_rows, ps = _image_side(rng, cfg.axial_pixel_mm, cfg.axial_fov_mm)

    def size() -> int:
        return base_rows if rng.random() > 0.05 else base_rows + 32   # shapes can vary inside a series

    blocks = []
    for li in range(start):  # one block per disc, angled through it
        normal = tangents[li] / np.linalg.norm(tangents[li])
        mid = canal[li] + np.array([rng.uniform(-3, 3), rng.uniform(-12, 12), 0.0])
        half = rng.uniform(5, 9)
        n = max(3, int(round(2 * half / spacing)) + 1)
        offsets = np.linspace(-half, half, n)[::-1] + rng.uniform(-1, 1)
        blocks.append(_axial_block(mid, normal, offsets, ps, size()))
    if stack:
        w = rng.uniform()
        mean_dir = tangents[start:].mean(0)
        normal = (1 - w) * mean_dir / np.linalg.norm(mean_dir) + w * np.array([0.0, 0.0, 1.0])
        normal /= np.linalg.norm(normal)
        mid = canal[start:].mean(0) + np.array([rng.uniform(-3, 3), rng.uniform(-6, 6), 0.0])
        pos = (canal[start:] - mid) @ normal
        hi, lo = pos.max() + rng.uniform(6, 14), pos.min() - rng.uniform(8, 16)
        n = int(np.floor((hi - lo) / spacing)) + 1
        blocks.append(_axial_block(mid, normal, hi - spacing * np.arange(n), ps, size()))
    # Splits are rarer when a stack leaves nothing to split; compensate so the overall rate holds.
    p_single = cfg.axial_stack_rate * STACK_START_P[0]
    p_split = min(1.0, cfg.split_axial_rate / max(1e-9, 1 - p_single))
    if rng.random() < p_split and len(blocks) > 1:
        n_series = min(len(blocks), int(rng.integers(2, 4)))
        split = np.array_split(np.arange(len(blocks)), n_series)
    else:
        split = [np.arange(len(blocks))]
    plans = []
    inferior_first = rng.random() < cfg.axial_inferior_first_rate
    for si, idx in enumerate(split):
        geoms = [g for b in idx for g in blocks[b]]
        if inferior_first:
            geoms = geoms[::-1]
        plans.append(SeriesPlan(series_ids[si], schema.AXIAL_T2, "T2", geoms, float(rng.uniform(3.0, spacing)),
                                spacing, _instance_numbers(rng, len(geoms))))
    return plans


def render_series(plan: SeriesPlan, intensity: np.ndarray, vol: Volume, rng: np.random.Generator,
                  cfg: SyntheticConfig, scale: float) -> list[np.ndarray]:
    """Sample the contrast volume at every pixel of every slice; add bias field and Rician noise."""
    images = []
    bias_dir = rng.normal(size=3)
    bias_dir /= np.linalg.norm(bias_dir)
    bias_centre = vol.origin + vol.vox * np.array(vol.labels.shape) / 2
    sigma = np.float32(cfg.noise)
    for g in plan.slices:
        # Pixel -> voxel index is affine (world -> body is a rotation): index = i0 + x * dx + y * dy.
        i0 = vol.to_index(np.asarray(g.ipp)).astype(np.float32)
        dx = vol.direction_to_index(g.row_dir * g.spacing[1]).astype(np.float32)
        dy = vol.direction_to_index(g.col_dir * g.spacing[0]).astype(np.float32)
        xs = np.arange(g.cols, dtype=np.float32)
        ys = np.arange(g.rows, dtype=np.float32)
        idx = np.empty((3, g.rows, g.cols), dtype=np.float32)
        for k in range(3):
            idx[k] = i0[k] + ys[:, None] * dy[k] + xs[None, :] * dx[k]
        img = ndimage.map_coordinates(intensity, idx, order=1, mode="nearest", prefilter=False)
        # Smooth multiplicative bias field, a function of position (coil sensitivity).
        b0 = float(np.dot(np.asarray(g.ipp) - bias_centre, bias_dir)) / 150.0
        bx = float(np.dot(g.row_dir, bias_dir)) * g.spacing[1] / 150.0
        by = float(np.dot(g.col_dir, bias_dir)) * g.spacing[0] / 150.0
        img *= 1.0 + cfg.bias * np.tanh(b0 + ys[:, None] * by + xs[None, :] * bx)
        n1 = rng.standard_normal(img.shape, dtype=np.float32)
        n2 = rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
        images.append(np.clip(img * scale, 0, 65535).astype(np.uint16))
    return images


def contrast_volume(vol: Volume, contrast: str, rng: np.random.Generator) -> np.ndarray:
    """Relative intensities of one contrast with per-study jitter, softened by partial volume."""
    lut = TISSUE_CONTRAST[:, CONTRAST_COLUMN[contrast]] * rng.uniform(0.9, 1.1, len(TISSUE_CONTRAST))
    lut = lut.astype(np.float32)
    return ndimage.gaussian_filter(lut[vol.labels], sigma=0.6 / vol.vox, mode="nearest", truncate=2.0)


# ----------------------------------------------------------------------------- DICOM writing


def _uid(*parts: Any) -> str:
    return str(generate_uid(prefix="1.2.826.0.1.3680043.10.1415.", entropy_srcs=[str(p) for p in parts]))


# ----------------------------------------------------------------------------- labels and their noise


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


# ----------------------------------------------------------------------------- one study


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
    ids = iter(_unique_ints(rng, 10**8, 4 * 10**9, 8))
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
        series_dir = Path(images_dir) / str(study_id) / str(plan.series_id)
        series_dir.mkdir(parents=True, exist_ok=True)
        for g, img, inst in zip(plan.slices, images, plan.instance_numbers, strict=True):
            write_slice(series_dir / f"{inst}.dcm", img, g, inst, plan.description,
                        study_uid=_uid(study_id), series_uid=_uid(study_id, plan.series_id),
                        sop_uid=_uid(study_id, plan.series_id, inst), patient_id=str(study_id),
                        frame_of_reference_uid=_uid(study_id, "frame"), series_number=number,
                        slice_thickness=plan.slice_thickness if with_spacing_tags else None,
                        spacing_between_slices=plan.spacing_between if with_spacing_tags else None,
                        rescale_slope=1.0 if rescale else None, rescale_intercept=0.0 if rescale else None,
                        window=display_window(img))

    labels, coords = annotate_study(study, cfg, is_test)
    return StudyResult(study_id, labels, [(p.series_id, p.description) for p in plans], coords)


def display_window(img: np.ndarray) -> tuple[int, int]:
    """(WindowCenter, WindowWidth) a scanner would store for a slice: the 0.5-99.5 percentile range, whole
    numbers as real files hold them (code written for them reads ``int(dcm.WindowCenter)``)."""
    lo, hi = np.percentile(img, (0.5, 99.5))
    return int(round((lo + hi) / 2)), max(1, int(round(hi - lo)))


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


def annotate_study(study: Study, cfg: SyntheticConfig, is_test: bool) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """train.csv cells and coordinate rows of one study: clean for test studies, noisy for training ones."""
    rng, a = study.label_rng, study.anatomy
    empty = empty_cells(rng, cfg)
    grades = a.severity if is_test else noisy_grades(a.severity, rng, cfg.grade_noise_rate)
    labels = {schema.label_column(cond, level): "" if (cond, level) in empty else schema.SEVERITIES[sev]
              for (cond, level), sev in grades.items()}
    coords: list[dict[str, Any]] = []
    if not is_test and rng.random() >= cfg.no_coords_rate:
        coords = _annotate(a, study.plans, labels, rng, cfg)
    return labels, coords


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


def _annotate(a: Anatomy, plans: list[SeriesPlan], labels: dict[str, str], rng: np.random.Generator,
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


# ----------------------------------------------------------------------------- the dataset


def _check_target(out: Path) -> None:
    """Refuse a folder holding anything this generator did not write (e.g. the real download)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise DataError(
            f"refusing to write synthetic data into {out}: it holds files the generator did not write "
            f"(no {MARKER} marker). Is the real competition data there? Choose another --out."
        )


OWNED = (schema.TRAIN_CSV, schema.COORDS_CSV, schema.TRAIN_SERIES_CSV, schema.TEST_SERIES_CSV,
         schema.SAMPLE_SUBMISSION_CSV, schema.TEST_SOLUTION_CSV, schema.TRAIN_IMAGES, schema.TEST_IMAGES)


def study_tasks(cfg: SyntheticConfig) -> list[tuple[int, int, bool]]:
    """(study_id, seed, is_test) of every study of a dataset, training studies first, each part sorted."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.train_studies + cfg.test_studies
    study_ids = np.array(_unique_ints(rng, 4_000_000, 4_290_000_000, n))
    order = rng.permutation(n)
    train_ids = sorted(int(s) for s in study_ids[order[: cfg.train_studies]])
    test_ids = sorted(int(s) for s in study_ids[order[cfg.train_studies:]])
    seeds = np.random.SeedSequence(cfg.seed).spawn(n)
    return [(sid, int(seeds[i].generate_state(1)[0]), i >= len(train_ids))
            for i, sid in enumerate(train_ids + test_ids)]


def generate(out: str | Path, cfg: SyntheticConfig, show_progress: bool = True) -> dict[str, Any]:
    """Write a complete synthetic competition folder into ``out``; returns the marker's content.

    Deterministic for ``cfg.seed``. A folder already holding the same complete dataset is left as it
    is; one holding an older synthetic dataset is cleared first; any other non-empty folder is refused.
    """
    out = Path(out)
    _check_target(out)
    params = {"version": GENERATOR_VERSION, **to_dict(cfg)}
    params.pop("workers")
    marker = out / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("params") == params and old.get("complete"):
            log.info("%s already holds this synthetic dataset (seed %d); nothing to do", out, cfg.seed)
            return old
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_text(marker, json.dumps({"params": params, "complete": False}, indent=2))

    tasks = []
    for sid, seed, is_test in study_tasks(cfg):
        images = out / (schema.TEST_IMAGES if is_test else schema.TRAIN_IMAGES)
        tasks.append((sid, seed, is_test, cfg, str(images)))

    results: list[StudyResult] = []
    if cfg.workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            it = pool.map(generate_study, tasks, chunksize=1)
            results = list(progress(it, "synthetic studies", len(tasks), enabled=show_progress))
    else:
        results = list(progress(map(generate_study, tasks), "synthetic studies", len(tasks), enabled=show_progress))

    train = [r for r, t in zip(results, tasks) if not t[2]]
    test = [r for r, t in zip(results, tasks) if t[2]]
    _write_tables(out, train, test)
    info = {"params": params, "complete": True, "train_studies": len(train), "test_studies": len(test)}
    write_text(marker, json.dumps(info, indent=2))
    return info


def _write_tables(out: Path, train: list[StudyResult], test: list[StudyResult]) -> None:
    train_df = pd.DataFrame(
        [{"study_id": r.study_id, **{c: r.labels[c] for c in schema.LABEL_COLUMNS}} for r in train],
        columns=list(schema.TRAIN_COLUMNS),
    )
    write_csv(train_df, out / schema.TRAIN_CSV)
    coords = [dict(row, study_id=r.study_id) for r in train for row in r.coords]
    coords_df = pd.DataFrame(coords, columns=list(schema.COORD_COLUMNS))
    write_csv(coords_df, out / schema.COORDS_CSV)
    for rows, name in ((train, schema.TRAIN_SERIES_CSV), (test, schema.TEST_SERIES_CSV)):
        df = pd.DataFrame(sorted((r.study_id, sid, d) for r in rows for sid, d in r.series),
                          columns=list(schema.SERIES_COLUMNS))   # by study, then series_id, as the real files
        write_csv(df, out / name)
    sample = pd.DataFrame(   # the real file: row ids sorted within each study, values written 0.3333333333333333
        [(rid, 1 / 3, 1 / 3, 1 / 3) for r in test for rid in sorted(schema.study_row_ids(r.study_id))],
        columns=list(schema.SUBMISSION_COLUMNS),
    )
    write_csv(sample, out / schema.SAMPLE_SUBMISSION_CSV)
    sol = []
    for r in test:
        for col in schema.LABEL_COLUMNS:
            sev = r.labels[col]
            if not sev:
                continue
            k = schema.SEVERITY_INDEX[sev]
            onehot = [1 if j == k else 0 for j in range(3)]
            sol.append((f"{r.study_id}_{col}", *onehot, int(schema.SEVERITY_WEIGHTS[k])))
    sol_df = pd.DataFrame(sol, columns=[*schema.SUBMISSION_COLUMNS, "sample_weight"])
    write_csv(sol_df, out / schema.TEST_SOLUTION_CSV)
