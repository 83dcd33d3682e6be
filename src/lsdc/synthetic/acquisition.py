"""Acquisition: series planned on the anatomy in scanner terms, as a technologist would (sagittal stacks
along left-right, axial blocks angled through each disc or one continuous stack over several levels), and
rendered through each slice's DICOM geometry with T1 / T2 / STIR contrast, a bias field and Rician noise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lsdc import schema
from lsdc.geometry import SliceGeometry
from lsdc.synthetic.anatomy import SIDES, Anatomy
from lsdc.synthetic.config import SyntheticConfig
from lsdc.synthetic.painting import CONTRAST_COLUMN, TISSUE_CONTRAST, Volume

# Where a continuous axial stack starts (L1/L2, L2/L3, L3/L4); it always runs down to L5/S1.
STACK_START_P = (0.5, 0.2, 0.3)


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


def unique_ints(rng: np.random.Generator, lo: int, hi: int, n: int) -> list[int]:
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
