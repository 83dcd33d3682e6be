"""A synthetic stand-in for the competition data, in exactly the competition's files and formats.

Each study is one coherent 3D lumbar spine in patient (LPS) coordinates: vertebral bodies and
discs L1 to S1 on a lordotic curve, the dural sac behind them, neural foramina and subarticular
recesses on each side. Every label is drawn where it belongs: spinal canal stenosis narrows the
canal at its level, foraminal narrowing one side's foramen, subarticular stenosis one side's recess.
The anatomy is painted into a label volume, turned into T1 / T2 / STIR contrast, and sampled by the
real DICOM geometry of each slice (sagittal stacks along left-right, axial blocks angled through the
discs), with scanner-like variation, a bias field and Rician noise. The coordinates CSV holds the true
positions in pixels of the instance they sit on, with the competition's conventions.
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
from lsdc.geometry import SliceGeometry, patient_to_pixel
from lsdc.io import write_csv, write_text
from lsdc.progress import progress

log = logging.getLogger(__name__)

MARKER = ".lsdc_synthetic.json"
GENERATOR_VERSION = 1
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
    """Knobs of the generator; defaults mimic the real data's rates."""

    train_studies: int = 200
    test_studies: int = 10
    seed: int = 0
    workers: int = 2
    voxel_mm: float = 1.0                 # resolution of the painted anatomy
    empty_label_rate: float = 0.003       # chance a label cell is empty (x20 for upper subarticular)
    missing_series_rate: float = 0.02     # chance a study lacks one sagittal series
    extra_t1_rate: float = 0.02           # chance of a second Sagittal T1
    split_axial_rate: float = 0.16        # chance the axial blocks come as two or three series
    no_coords_rate: float = 0.01          # chance a training study has no coordinates at all
    missing_coord_rate: float = 0.005     # chance a labeled cell has no coordinate row
    coord_noise_mm: float = 0.8           # annotation noise (standard deviation)
    noise: float = 0.035                  # Rician noise, relative to the brightest tissue
    bias: float = 0.25                    # amplitude of the smooth bias field
    sagittal_size: tuple[int, int] = (256, 384)   # range of image side in pixels
    axial_size: tuple[int, int] = (192, 320)


# ----------------------------------------------------------------------------- anatomy


@dataclass
class Anatomy:
    """One patient's lumbar spine: a canal centre line and per-level structures, in LPS mm."""

    x0: float                     # midline (patient x)
    y0: float                     # canal centre y at the curve's apex
    z_apex: float                 # z of the apex of the lordosis
    curvature: float              # lordosis: y = y0 + k (z - z_apex)^2
    canal_ap: float               # canal radii (mm) when normal
    canal_lr: float
    disc_z: np.ndarray            # (5,) z of each disc centre, L1/L2 to L5/S1
    body_z: np.ndarray            # (6,) z of each vertebral body centre, L1 to S1
    body_h: np.ndarray            # (6,) body heights
    disc_h: np.ndarray            # (5,) disc heights
    body_depth: float
    body_width: float
    foramen_x: float              # |x - x0| of the foramina
    severity: dict[tuple[str, str], int]  # (condition, level) -> 0/1/2 (drawn even if the label is empty)

    def centre(self, z: np.ndarray | float) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        y = self.y0 + self.curvature * (z - self.z_apex) ** 2
        return np.stack([np.full_like(z, self.x0), y, z], axis=-1)

    def tangent(self, z: float) -> np.ndarray:
        """Unit vector along the canal, pointing to the head."""
        t = np.array([0.0, 2 * self.curvature * (z - self.z_apex), 1.0])
        return t / np.linalg.norm(t)

    def posterior(self, z: float) -> np.ndarray:
        """Unit vector perpendicular to the canal in the sagittal plane, pointing backwards."""
        a = np.array([0.0, 1.0, -2 * self.curvature * (z - self.z_apex)])
        return a / np.linalg.norm(a)

    def frame(self, z: float) -> np.ndarray:
        """Rows: lateral (patient left), posterior, superior unit vectors at height z."""
        return np.stack([np.array([1.0, 0.0, 0.0]), self.posterior(z), self.tangent(z)])

    def canal_point(self, level: int) -> np.ndarray:
        """Canal centre at a disc: where spinal canal stenosis is annotated."""
        return self.centre(self.disc_z[level])

    def disc_centre(self, level: int) -> np.ndarray:
        z = self.disc_z[level]
        return self.centre(z) - self.posterior(z) * (self.canal_ap + 2.5 + self.body_depth / 2)

    def foramen_point(self, level: int, side: str) -> np.ndarray:
        z = self.disc_z[level]
        return (self.centre(z) + SIDE_SIGN[side] * self.foramen_x * np.array([1.0, 0, 0])
                - 1.5 * self.posterior(z) + 2.5 * self.tangent(z))

    def recess_point(self, level: int, side: str) -> np.ndarray:
        z = self.disc_z[level]
        return (self.centre(z) + SIDE_SIGN[side] * 0.72 * self.canal_lr * np.array([1.0, 0, 0])
                + 0.35 * self.canal_ap * self.posterior(z))


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


def make_anatomy(rng: np.random.Generator) -> Anatomy:
    body_h = rng.uniform(24, 30, 6) * np.array([1.0, 1.02, 1.04, 1.05, 1.04, 1.1])
    disc_h = rng.uniform(8, 11.5, 5) * np.array([0.85, 0.95, 1.0, 1.05, 0.9])
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
    return Anatomy(
        x0=float(rng.uniform(-12, 12)),
        y0=float(rng.uniform(-20, 40)),
        z_apex=float(disc_z_arr[2] + rng.uniform(-10, 10)),
        curvature=float(rng.uniform(0.0012, 0.0028)),
        canal_ap=float(rng.uniform(6.5, 8.0)),
        canal_lr=float(rng.uniform(9.5, 11.5)),
        disc_z=disc_z_arr,
        body_z=body_z_arr,
        body_h=body_h,
        disc_h=disc_h,
        body_depth=float(rng.uniform(31, 37)),
        body_width=float(rng.uniform(46, 54)),
        foramen_x=float(rng.uniform(18, 22)),
        severity=draw_labels(rng),
    )


# ----------------------------------------------------------------------------- painting


@dataclass
class Volume:
    """A label volume on a regular grid: voxel (i, j, k) sits at origin + vox * (i, j, k) (LPS)."""

    origin: np.ndarray
    vox: float
    labels: np.ndarray  # uint8 (nx, ny, nz)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - self.origin) / self.vox


def _box(vol: Volume, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice, np.ndarray]:
    """Index box around a sphere and the patient coordinates of its voxels (..., 3)."""
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
    """Set ``label`` inside a (super-)ellipsoid with semi-axes ``radii`` along the rows of ``frame``."""
    r = np.asarray(radii, dtype=float)
    sx, sy, sz, pts = _box(vol, centre, float(r.max()))
    if pts.size == 0:
        return
    local = (pts - centre.astype(np.float32)) @ (frame.T / r).astype(np.float32)
    inside = (np.abs(local) ** power).sum(-1) <= 1.0
    vol.labels[sx, sy, sz][inside] = label


def paint_canal(vol: Volume, a: Anatomy) -> None:
    """Epidural fat, dural sac (CSF) narrowed at stenotic discs, stenotic tissue and nerve roots."""
    nx, ny, nz = vol.labels.shape
    zs = vol.origin[2] + vol.vox * np.arange(nz)
    xs = vol.origin[0] + vol.vox * np.arange(nx)
    ys = vol.origin[1] + vol.vox * np.arange(ny)
    cond = schema.condition_for("spinal")
    narrowing = np.zeros_like(zs)
    for li, level in enumerate(schema.LEVELS):
        lost = 1.0 - SEVERITY_FACTOR[a.severity[(cond, level)]]
        narrowing = np.maximum(narrowing, lost * np.exp(-(((zs - a.disc_z[li]) / (0.55 * a.disc_h[li] + 2.5)) ** 2)))
    z_lo, z_hi = a.body_z[-1] + 5, a.body_z[0] + 60  # the sac ends in the sacrum
    centre_y = a.centre(zs)[:, 1]
    cos_t = 1.0 / np.sqrt(1 + (2 * a.curvature * (zs - a.z_apex)) ** 2)
    dx = (xs - a.x0)[:, None, None]
    dy = (ys[None, :, None] - centre_y[None, None, :]) * cos_t[None, None, :]
    r_ap = a.canal_ap * (1 - narrowing)[None, None, :]
    r_lr = a.canal_lr * (1 - 0.45 * narrowing)[None, None, :]
    zmask = ((zs >= z_lo) & (zs <= z_hi))[None, None, :]
    normal = ((dx / a.canal_lr) ** 2 + (dy / a.canal_ap) ** 2 <= 1) & zmask
    fat = ((dx / (a.canal_lr + 2.5)) ** 2 + (dy / (a.canal_ap + 2.0)) ** 2 <= 1) & zmask
    sac = ((dx / r_lr) ** 2 + (dy / r_ap) ** 2 <= 1) & zmask
    lab = vol.labels
    lab[fat] = FAT
    lab[normal] = LIGAMENT          # what the narrowing takes, bulging disc and thick ligament
    lab[sac] = CSF
    # A few cauda equina roots: thin dark strands inside the sac, in its posterior half.
    for off_x, off_y in ((-3.0, 2.5), (3.0, 2.5), (-1.2, 4.0), (1.2, 4.0)):
        root = ((dx - off_x) ** 2 + (dy - off_y * (1 - narrowing)[None, None, :]) ** 2 <= 0.8 ** 2) & sac
        lab[root] = NERVE


def paint_study(a: Anatomy, vox: float) -> Volume:
    """Paint the whole lumbar region of one patient into a label volume."""
    top, bottom = a.body_z[0] + 45, a.body_z[-1] - 45
    y_mid = a.centre(a.disc_z[2])[1]
    origin = np.array([a.x0 - 52, y_mid - 135, bottom])
    shape = np.ceil(np.array([104, 225, top - bottom]) / vox).astype(int) + 1
    vol = Volume(origin=origin, vox=vox, labels=np.full(tuple(shape), ORGAN, dtype=np.uint8))
    nx, ny, nz = shape
    xs = origin[0] + vox * np.arange(nx)
    ys = origin[1] + vox * np.arange(ny)
    # Torso: abdominal soft tissue in front, back muscles behind the canal, a fat layer under the skin.
    dx = (xs - a.x0)[:, None]
    dyb = (ys - y_mid)[None, :]
    skin_y = y_mid + 70
    back = (dyb > -10) & (np.abs(dx) < 48)
    muscle = back & (dyb < skin_y - y_mid - 14)
    fat = (dyb >= skin_y - y_mid - 14) & (dyb < skin_y - y_mid)
    air = dyb >= skin_y - y_mid
    psoas = ((np.abs(dx) - 30) ** 2 / 12 ** 2 + (dyb + 35) ** 2 / 14 ** 2) <= 1
    muscle, fat, air, psoas = (np.broadcast_to(m, (nx, ny)) for m in (muscle, fat, air, psoas))
    plane = np.full((nx, ny), ORGAN, dtype=np.uint8)
    plane[muscle | psoas] = MUSCLE
    plane[fat] = FAT
    plane[air] = AIR
    vol.labels[:] = plane[:, :, None]

    for bi in range(6):  # vertebral bodies: cortical shell, marrow inside
        z = a.body_z[bi]
        c = a.centre(z) - a.posterior(z) * (a.canal_ap + 2.5 + a.body_depth / 2)
        f = a.frame(z)
        half = (a.body_width / 2, a.body_depth / 2, a.body_h[bi] / 2)
        paint_ellipsoid(vol, c, f, half, BONE, power=3.0)
        paint_ellipsoid(vol, c, f, tuple(h - 1.6 for h in half), MARROW, power=3.0)
        # Posterior arch: pedicles (seen on parasagittal slices above and below each foramen),
        # lamina and spinous process behind the canal.
        for side in SIDES:
            pc = a.centre(z) + SIDE_SIGN[side] * a.foramen_x * f[0] - 0.5 * f[1] + 1.5 * f[2]
            paint_ellipsoid(vol, pc, f, (6.0, 8.0, 0.32 * a.body_h[bi]), BONE)
            paint_ellipsoid(vol, pc, f, (4.5, 6.5, 0.32 * a.body_h[bi] - 1.5), MARROW)
        paint_ellipsoid(vol, a.centre(z) + (a.canal_ap + 6) * f[1] + 3 * f[2], f,
                        (a.canal_lr + 4, 4.0, 0.35 * a.body_h[bi]), BONE)
        paint_ellipsoid(vol, a.centre(z) + (a.canal_ap + 26) * f[1] + 2 * f[2], f, (3.5, 18.0, 7.0), BONE)
    for li, level in enumerate(schema.LEVELS):  # discs, foramina, facets and recesses
        z = a.disc_z[li]
        f = a.frame(z)
        c = a.disc_centre(li)
        half = (a.body_width / 2 - 1, a.body_depth / 2 + 0.8, a.disc_h[li] / 2)
        paint_ellipsoid(vol, c, f, half, ANNULUS, power=2.5)
        paint_ellipsoid(vol, c + 2 * f[1], f, (half[0] * 0.55, half[1] * 0.55, half[2] * 0.6), NUCLEUS)
        for side in SIDES:
            s = SIDE_SIGN[side]
            # Facet joint behind the foramen and lateral to the recess: grows as the recess narrows.
            sev_sub = a.severity[(schema.condition_for("subarticular", side), level)]
            facet_c = a.centre(z) + s * (a.canal_lr + 4.5) * f[0] + (a.canal_ap + 3.0) * f[1]
            grow = 1.0 + 0.45 * sev_sub
            paint_ellipsoid(vol, facet_c, f, (6.0 * grow, 6.0 * grow, 9.0), BONE)
            # Foramen: a keyhole of fat with the exiting root, narrowed by the severity.
            sev_for = a.severity[(schema.condition_for("foraminal", side), level)]
            k = SEVERITY_FACTOR[sev_for]
            fc = a.foramen_point(li, side)
            paint_ellipsoid(vol, fc, f, (6.0, 6.5, 8.5), LIGAMENT)
            paint_ellipsoid(vol, fc - (1 - k) * 2.5 * f[1], f, (5.5, 6.0 * k, 8.0 * k), FAT)
            paint_ellipsoid(vol, fc + 8.0 * k * 0.45 * f[2], f, (5.0, 1.8, 1.8 * min(1.0, 1.3 * k)), NERVE)
    paint_canal(vol, a)
    for li, level in enumerate(schema.LEVELS):  # lateral recesses: CSF pockets narrowed by the facet
        z = a.disc_z[li]
        f = a.frame(z)
        for side in SIDES:
            s = SIDE_SIGN[side]
            sev = a.severity[(schema.condition_for("subarticular", side), level)]
            k = SEVERITY_FACTOR[sev]
            rc = a.recess_point(li, side)
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
    """Usually 1..n; sometimes starting elsewhere or with gaps, as on real scanners."""
    start = 1 if rng.random() < 0.85 else int(rng.integers(2, 40))
    if rng.random() < 0.08:
        steps = rng.integers(1, 4, size=n)
        steps[0] = 0
        return [start + int(s) for s in np.cumsum(steps)]
    return list(range(start, start + n))


def _plane_axes(normal: np.ndarray, up_hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions of an image plane with the given normal."""
    n = normal / np.linalg.norm(normal)
    col = up_hint - np.dot(up_hint, n) * n
    col /= np.linalg.norm(col)
    row = np.cross(col, n)
    return row, col


def plan_sagittal(rng: np.random.Generator, a: Anatomy, cfg: SyntheticConfig, series_id: int,
                  description: str, contrast: str) -> SeriesPlan:
    n = int(rng.integers(15, 21))
    spacing = float(rng.uniform(3.3, 5.0))
    size_lo, size_hi = cfg.sagittal_size
    rows = int(rng.integers(size_lo, size_hi + 1)) // 2 * 2
    cols = int(np.clip(rows * rng.choice([1.0, 1.0, 0.85, 1.15]), size_lo, size_hi)) // 2 * 2
    fov = float(rng.uniform(220, 290))
    ps = fov / rows
    yaw = np.deg2rad(rng.uniform(-3, 3))
    normal = np.array([-np.cos(yaw), -np.sin(yaw), 0.0])   # towards the patient's right, like [0,1,0,0,0,-1]
    row = np.array([-np.sin(yaw), np.cos(yaw), 0.0])        # posterior
    col = np.array([0.0, 0.0, -1.0])                        # down
    assert np.allclose(np.cross(row, col), normal)
    centre = a.centre(a.disc_z[2]) + np.array([rng.uniform(-3, 3), rng.uniform(-25, 5), rng.uniform(-12, 12)])
    offsets = (np.arange(n) - (n - 1) / 2 + rng.uniform(-0.4, 0.4)) * spacing
    descending = rng.random() < 0.5   # instance order right-to-left or left-to-right
    geoms = []
    for off in (offsets[::-1] if descending else offsets):
        c = centre + off * normal
        ipp = c - row * ps * (cols - 1) / 2 - col * ps * (rows - 1) / 2
        geoms.append(SliceGeometry(tuple(ipp), (*row, *col), (ps, ps), rows, cols))
    return SeriesPlan(series_id, description, contrast, geoms, float(rng.uniform(3.0, spacing)), spacing,
                      _instance_numbers(rng, n))


def plan_axial(rng: np.random.Generator, a: Anatomy, cfg: SyntheticConfig,
               series_ids: list[int]) -> list[SeriesPlan]:
    """Axial T2 blocks angled through the discs, grouped into one to three series."""
    n_blocks = int(rng.choice([1, 2, 3, 5], p=[0.2, 0.3, 0.3, 0.2]))
    groups = np.array_split(np.arange(5), n_blocks)
    spacing = float(rng.uniform(3.5, 5.0))
    size_lo, size_hi = cfg.axial_size
    ps = float(rng.uniform(0.5, 0.85))
    base_rows = int(rng.integers(size_lo, size_hi + 1)) // 2 * 2
    blocks = []
    for g in groups:
        zs = a.disc_z[g]
        normal = np.mean([a.tangent(z) for z in zs], axis=0)
        normal /= np.linalg.norm(normal)
        first, last = a.centre(zs.max()), a.centre(zs.min())
        mid = (first + last) / 2 + np.array([rng.uniform(-3, 3), rng.uniform(-12, 12), 0.0])
        half = abs(np.dot(first - last, normal)) / 2 + rng.uniform(5, 9)
        n = max(3, int(round(2 * half / spacing)) + 1)
        offsets = np.linspace(-half, half, n)
        row, col = _plane_axes(normal, np.array([0.0, 1.0, 0.0]))  # col ~ posterior, row ~ patient left
        if np.dot(row, [1.0, 0.0, 0.0]) < 0:
            row = -row
        rows = base_rows if rng.random() > 0.05 else base_rows + 32   # shapes can vary inside a series
        cols = rows
        geoms = []
        for off in offsets[::-1]:  # superior first
            c = mid + off * normal
            ipp = c - row * ps * (cols - 1) / 2 - col * ps * (rows - 1) / 2
            geoms.append(SliceGeometry(tuple(ipp), (*row, *col), (ps, ps), rows, cols))
        blocks.append(geoms)
    if rng.random() < cfg.split_axial_rate and len(blocks) > 1:
        n_series = min(len(blocks), int(rng.integers(2, 4)))
        split = np.array_split(np.arange(len(blocks)), n_series)
    else:
        split = [np.arange(len(blocks))]
    plans = []
    inferior_first = rng.random() < 0.3
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
    for g in plan.slices:
        # Pixel -> voxel index is affine: index = i0 + x * dx + y * dy (float32 to save time).
        i0 = vol.to_index(np.asarray(g.ipp)).astype(np.float32)
        dx = (g.row_dir * g.spacing[1] / vol.vox).astype(np.float32)
        dy = (g.col_dir * g.spacing[0] / vol.vox).astype(np.float32)
        xs = np.arange(g.cols, dtype=np.float32)
        ys = np.arange(g.rows, dtype=np.float32)
        idx = np.empty((3, g.rows, g.cols), dtype=np.float32)
        for k in range(3):
            idx[k] = i0[k] + ys[:, None] * dy[k] + xs[None, :] * dx[k]
        img = ndimage.map_coordinates(intensity, idx, order=1, mode="nearest", prefilter=False)
        # Smooth multiplicative bias field, a function of patient position (coil sensitivity).
        b0 = float(np.dot(np.asarray(g.ipp) - bias_centre, bias_dir)) / 150.0
        bx = float(np.dot(g.row_dir, bias_dir)) * g.spacing[1] / 150.0
        by = float(np.dot(g.col_dir, bias_dir)) * g.spacing[0] / 150.0
        img *= 1.0 + cfg.bias * np.tanh(b0 + ys[:, None] * by + xs[None, :] * bx)
        sigma = np.float32(cfg.noise)
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


# ----------------------------------------------------------------------------- one study


@dataclass
class StudyResult:
    """What the CSVs need from one generated study."""

    study_id: int
    labels: dict[str, str]                  # label column -> severity or "" when empty
    series: list[tuple[int, str]]           # (series_id, description)
    coords: list[dict[str, Any]]


def _pixel_on(plan: SeriesPlan, point: np.ndarray, rng: np.random.Generator,
              noise_mm: float, pick: str = "nearest") -> tuple[int, float, float] | None:
    """Instance number and noisy pixel of the slice of ``plan`` nearest to ``point``."""
    best = None
    for i, g in enumerate(plan.slices):
        x, y, d = patient_to_pixel(g, point)
        if best is None or abs(d) < best[0]:
            best = (abs(float(d)), i, float(x), float(y))
    assert best is not None
    _, i, x, y = best
    g = plan.slices[i]
    x += rng.normal(0, noise_mm) / g.spacing[1]
    y += rng.normal(0, noise_mm) / g.spacing[0]
    if not (0 <= x < g.cols and 0 <= y < g.rows):
        return None
    return plan.instance_numbers[i], x, y


def generate_study(args: tuple[int, int, bool, SyntheticConfig, str]) -> StudyResult:
    """Generate, render and write one study (a process-pool task)."""
    study_id, seed, is_test, cfg, images_dir = args
    rng = np.random.default_rng(seed)
    a = make_anatomy(rng)
    vol = paint_study(a, cfg.voxel_mm)

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

    # Sorted: a set of strings iterates in an order that changes from process to process (hash seed).
    volumes = {c: contrast_volume(vol, c, rng) for c in sorted({p.contrast for p in plans})}
    scale = float(rng.uniform(400, 3500))
    with_spacing_tags = not (is_test and rng.random() < 0.3)
    rescale = rng.random() < 0.4
    for number, plan in enumerate(plans, start=1):
        images = render_series(plan, volumes[plan.contrast], vol, rng, cfg, scale)
        series_dir = Path(images_dir) / str(study_id) / str(plan.series_id)
        series_dir.mkdir(parents=True, exist_ok=True)
        for g, img, inst in zip(plan.slices, images, plan.instance_numbers):
            write_slice(series_dir / f"{inst}.dcm", img, g, inst, plan.description,
                        study_uid=_uid(study_id), series_uid=_uid(study_id, plan.series_id),
                        sop_uid=_uid(study_id, plan.series_id, inst), patient_id=str(study_id),
                        frame_of_reference_uid=_uid(study_id, "frame"), series_number=number,
                        slice_thickness=plan.slice_thickness if with_spacing_tags else None,
                        spacing_between_slices=plan.spacing_between if with_spacing_tags else None,
                        rescale_slope=1.0 if rescale else None, rescale_intercept=0.0 if rescale else None)

    labels: dict[str, str] = {}
    for (cond, level), sev in a.severity.items():
        info = schema.CONDITION_INFO[cond]
        upper_sub = info.group == "subarticular" and level in schema.LEVELS[:2]
        rate = cfg.empty_label_rate * (20 if upper_sub else 1)
        labels[schema.label_column(cond, level)] = "" if rng.random() < rate else schema.SEVERITIES[sev]

    coords: list[dict[str, Any]] = []
    if not is_test and rng.random() >= cfg.no_coords_rate:
        coords = _annotate(a, plans, labels, rng, cfg)
    return StudyResult(study_id, labels, [(p.series_id, p.description) for p in plans], coords)


def _annotate(a: Anatomy, plans: list[SeriesPlan], labels: dict[str, str], rng: np.random.Generator,
              cfg: SyntheticConfig) -> list[dict[str, Any]]:
    """Coordinate rows with the real conventions (canal on one mid-sagittal T2 slice, ...)."""
    by_desc: dict[str, list[SeriesPlan]] = {}
    for p in plans:
        by_desc.setdefault(p.description, []).append(p)
    rows = []

    def add(plan: SeriesPlan, cond: str, level: str, hit: tuple[int, float, float] | None) -> None:
        if hit is None or not labels[schema.label_column(cond, level)] or rng.random() < cfg.missing_coord_rate:
            return
        inst, x, y = hit
        rows.append({"study_id": 0, "series_id": plan.series_id, "instance_number": inst,
                     "condition": cond, "level": level, "x": round(x, 6), "y": round(y, 6)})

    for cond in schema.CONDITIONS:
        info = schema.CONDITION_INFO[cond]
        candidates = by_desc.get(info.series, [])
        if not candidates:
            continue
        if info.group == "spinal":
            plan = candidates[0]
            # All five canal points on the one slice nearest the midline.
            mid = _pixel_on(plan, a.canal_point(2), rng, 0.0)
            for li, level in enumerate(schema.LEVELS):
                hit = _pixel_on(plan, a.canal_point(li), rng, cfg.coord_noise_mm)
                if hit is not None and mid is not None:
                    hit = (mid[0], hit[1], hit[2])
                add(plan, cond, level, hit)
        elif info.group == "foraminal":
            plan = candidates[0]
            for li, level in enumerate(schema.LEVELS):
                add(plan, cond, level, _pixel_on(plan, a.foramen_point(li, info.side), rng, cfg.coord_noise_mm))
        else:
            for li, level in enumerate(schema.LEVELS):
                point = a.recess_point(li, info.side)
                best = min(candidates, key=lambda p: min(abs(patient_to_pixel(g, point)[2]) for g in p.slices))
                add(best, cond, level, _pixel_on(best, point, rng, cfg.coord_noise_mm))
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

    rng = np.random.default_rng(cfg.seed)
    n = cfg.train_studies + cfg.test_studies
    study_ids = np.array(_unique_ints(rng, 4_000_000, 4_290_000_000, n))
    order = rng.permutation(n)
    train_ids = sorted(int(s) for s in study_ids[order[: cfg.train_studies]])
    test_ids = sorted(int(s) for s in study_ids[order[cfg.train_studies:]])
    seeds = np.random.SeedSequence(cfg.seed).spawn(n)
    tasks = []
    for i, sid in enumerate(train_ids + test_ids):
        is_test = i >= len(train_ids)
        images = out / (schema.TEST_IMAGES if is_test else schema.TRAIN_IMAGES)
        tasks.append((sid, int(seeds[i].generate_state(1)[0]), is_test, cfg, str(images)))

    results: list[StudyResult] = []
    if cfg.workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            it = pool.map(generate_study, tasks, chunksize=1)
            results = list(progress(it, "synthetic studies", len(tasks), enabled=show_progress))
    else:
        results = list(progress(map(generate_study, tasks), "synthetic studies", len(tasks), enabled=show_progress))

    train = [r for r in results if r.study_id in set(train_ids)]
    test = [r for r in results if r.study_id in set(test_ids)]
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
        df = pd.DataFrame([(r.study_id, sid, d) for r in rows for sid, d in r.series],
                          columns=list(schema.SERIES_COLUMNS))
        write_csv(df, out / name)
    sample = pd.DataFrame(
        [(rid, 1 / 3, 1 / 3, 1 / 3) for r in test for rid in schema.study_row_ids(r.study_id)],
        columns=list(schema.SUBMISSION_COLUMNS),
    )
    write_csv(sample, out / schema.SAMPLE_SUBMISSION_CSV, float_format="%.6f")
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
