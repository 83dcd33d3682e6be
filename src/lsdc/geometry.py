"""DICOM patient-space geometry as pure functions.

Conventions (DICOM PS3.3 C.7.6.2): patient axes are LPS (x to the patient's left, y to posterior,
z to head). ``iop`` is ImageOrientationPatient: the first triple is the direction of increasing
column index (image x), the second of increasing row index (image y). ``spacing`` is PixelSpacing:
(distance between rows, distance between columns) in mm. Pixel (x, y) is (column, row), with (0, 0)
the centre of the top-left pixel, as in train_label_coordinates.csv.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class SliceGeometry:
    """Where one image sits in patient space."""

    ipp: tuple[float, float, float]                      # ImagePositionPatient (mm)
    iop: tuple[float, float, float, float, float, float]  # ImageOrientationPatient
    spacing: tuple[float, float]                          # PixelSpacing (row, column) mm
    rows: int
    cols: int

    # Cached (read-only) because projections call them for every slice of every series.
    @cached_property
    def row_dir(self) -> np.ndarray:
        return _frozen(np.asarray(self.iop[:3], dtype=float))

    @cached_property
    def col_dir(self) -> np.ndarray:
        return _frozen(np.asarray(self.iop[3:], dtype=float))

    @cached_property
    def normal(self) -> np.ndarray:
        return _frozen(slice_normal(self.iop))

    @cached_property
    def origin(self) -> np.ndarray:
        """ImagePositionPatient as a read-only (3,) array."""
        return _frozen(np.asarray(self.ipp, dtype=float))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def slice_normal(iop: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Unit normal of an image plane: row direction x column direction."""
    a, b, c, d, e, f = (float(v) for v in iop)
    n = np.array([b * f - c * e, c * d - a * f, a * e - b * d])  # the cross product, without np.cross's overhead
    return n / np.linalg.norm(n)


def pixel_to_patient(g: SliceGeometry, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """Patient coordinates (..., 3) in mm of pixel (x=column, y=row) on slice ``g``."""
    x = np.asarray(x, dtype=float)[..., None]
    y = np.asarray(y, dtype=float)[..., None]
    return (g.origin + x * g.spacing[1] * g.row_dir
            + y * g.spacing[0] * g.col_dir)


def patient_to_pixel(g: SliceGeometry, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project patient points (..., 3) onto slice ``g``.

    Returns (x, y, distance): pixel column and row of the orthogonal projection, and the signed
    distance in mm from the plane along its normal.
    """
    d = np.asarray(points, dtype=float) - g.origin
    x = d @ g.row_dir / g.spacing[1]
    y = d @ g.col_dir / g.spacing[0]
    dist = d @ g.normal
    return x, y, dist


def slice_positions(geoms: list[SliceGeometry], normal: np.ndarray | None = None) -> np.ndarray:
    """Position of each slice along a normal (the first slice's if not given), in mm."""
    if not geoms:
        return np.zeros(0)
    n = geoms[0].normal if normal is None else np.asarray(normal, dtype=float)
    return np.array([np.dot(np.asarray(g.ipp, dtype=float), n) for g in geoms])


def nearest_slice(geoms: list[SliceGeometry], point: np.ndarray) -> tuple[int, float, float, float]:
    """The slice of a series nearest to a patient point, and the point's pixel on it.

    Each slice's own plane is used, so oblique and non-parallel blocks work; among slices the point
    projects inside of, the nearest wins (crossing oblique planes can pass close to a point far outside
    their field of view), else the nearest of all. Returns (index, x, y, |distance| in mm).
    """
    if not geoms:
        raise ValueError("nearest_slice needs at least one slice")
    best = None
    for i, g in enumerate(geoms):
        x, y, dist = patient_to_pixel(g, point)
        x, y = float(x), float(y)
        cand = (not inside_image(g, x, y), abs(float(dist)), i, x, y)
        if best is None or cand[:2] < best[:2]:
            best = cand
    assert best is not None
    return best[2], best[3], best[4], best[1]


def inside_image(g: SliceGeometry, x: float, y: float, margin: float = 0.0) -> bool:
    """True if pixel (x, y) lies within the image, ``margin`` pixels inside its border."""
    return (-0.5 + margin <= x <= g.cols - 0.5 - margin) and (-0.5 + margin <= y <= g.rows - 0.5 - margin)
