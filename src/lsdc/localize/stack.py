"""A series as the detectors see it: every slice resized (or a region of interest resampled) and windowed."""

from __future__ import annotations

import cv2
import numpy as np

from lsdc.crops import resample_patch, series_window
from lsdc.dicom import Series
from lsdc.geometry import patient_to_pixel, pixel_to_patient
from lsdc.localize.config import LocalizerConfig
from lsdc.localize.views import CANAL_ROI, FORAMEN, RECESS, View

WINDOW_PCT = (1.0, 99.5)   # the detectors' inputs are windowed per series like the crops
LEFT = np.array([1.0, 0.0, 0.0])   # the patient's left in LPS coordinates


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
