"""One ROI crop: the series' intensity window, the patch resampled to a fixed side in mm around its point,
and the neighbour slices found through patient space; the PNG a crop is stored as."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lsdc.crops.config import WINDOW_SLICES, CropConfig
from lsdc.dicom import Series
from lsdc.errors import DataError
from lsdc.geometry import patient_to_pixel
from lsdc.io import atomic_path


def intensity_window(images: list[np.ndarray], low_pct: float, high_pct: float) -> tuple[float, float]:
    """Robust (low, high) intensity of a series, from the whole slices that were read.

    Every 4th pixel of every 4th row is plenty for two percentiles (thousands of values per slice)
    and makes the window cost less than the crops.
    """
    values = np.concatenate([np.asarray(im, dtype=np.float32)[::4, ::4].ravel() for im in images])
    lo, hi = np.percentile(values, [low_pct, high_pct])
    return float(lo), float(max(hi, lo + 1e-3))


def window_slices(n_total: int) -> list[int]:
    """The slices a series' intensity window is taken from: up to WINDOW_SLICES, evenly spaced."""
    return sorted(set(np.linspace(0, n_total - 1, min(n_total, WINDOW_SLICES)).round().astype(int).tolist()))


def series_window(series: Series, low_pct: float, high_pct: float) -> tuple[float, float]:
    """The robust intensity window of a series, from its :func:`window_slices` alone: every crop of a
    series gets the same window whichever cells are cut with it (training, a resumed run, a test study)."""
    return intensity_window(series.images(window_slices(len(series))), low_pct, high_pct)


def neighbour_indices(centre: int, n_slices: int, n_total: int) -> list[int]:
    """Slice indices centre-k .. centre+k, repeating the edge slice where the series ends."""
    k = n_slices // 2
    return [min(max(centre + d, 0), n_total - 1) for d in range(-k, k + 1)]


def resample_patch(image: np.ndarray, x: float, y: float, size_mm: float, spacing: tuple[float, float],
                   out: int) -> np.ndarray:
    """A square of ``size_mm`` centred on pixel (x, y), resampled bilinearly to ``out`` x ``out``.

    Outside the image is 0. ``spacing`` is (row, column) mm per pixel of ``image``. Where the square is
    shrunk (more than one input pixel per output pixel, e.g. the localiser's 180 mm region at 96 px from real
    0.5 mm pixels) the region is first low-pass filtered (Gaussian, sigma (factor - 1) / 2 per axis, as
    scikit-image's anti-aliasing): bilinear sampling alone would alias the noise of fine pixels.
    """
    sx = size_mm / out / spacing[1]  # input pixels per output pixel, along x
    sy = size_mm / out / spacing[0]
    c = (out - 1) / 2
    image = np.ascontiguousarray(image, dtype=np.float32)
    if max(sx, sy) > 1:
        sigma_x, sigma_y = max(0.0, (sx - 1) / 2), max(0.0, (sy - 1) / 2)
        rx, ry = (c + 1) * sx + 3 * sigma_x + 2, (c + 1) * sy + 3 * sigma_y + 2   # what the square reads
        x0, x1 = max(0, int(np.floor(x - rx))), min(image.shape[1], int(np.ceil(x + rx)) + 1)
        y0, y1 = max(0, int(np.floor(y - ry))), min(image.shape[0], int(np.ceil(y + ry)) + 1)
        if x0 < x1 and y0 < y1:
            image = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), sigmaX=max(sigma_x, 1e-3),
                                     sigmaY=max(sigma_y, 1e-3), borderType=cv2.BORDER_REFLECT)
            x, y = x - x0, y - y0
    m = np.array([[sx, 0, x - c * sx], [0, sy, y - c * sy]], dtype=np.float64)
    return cv2.warpAffine(image, m, (out, out),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def crop_roi(series: Series, index: int, x: float, y: float, size_mm: float, cfg: CropConfig,
             window: tuple[float, float]) -> np.ndarray:
    """The ROI crop of a point: uint8 (size, size, n_slices), slice ``index`` in the middle channel.

    (x, y) is the point's pixel on slice ``index``; each neighbour gets the same patient point projected
    onto its own plane.
    """
    point = series.pixel_to_patient(index, x, y)
    lo, hi = window
    scale = 255.0 / (hi - lo)
    channels = []
    for j in neighbour_indices(index, cfg.n_slices, len(series)):
        g = series.slices[j].geometry
        if j == index:
            xj, yj = x, y
        else:
            px, py, _ = patient_to_pixel(g, point)
            xj, yj = float(px), float(py)
        patch = resample_patch(series.image(j), xj, yj, size_mm, g.spacing, cfg.size)
        # (patch - lo) * 255 / (hi - lo), rounded and saturated to 0..255 in one OpenCV call.
        channels.append(cv2.addWeighted(patch, scale, patch, 0.0, -lo * scale, dtype=cv2.CV_8U))
    return cv2.merge(channels) if len(channels) > 1 else channels[0][..., None]


def save_crop(path: Path, crop: np.ndarray) -> None:
    """PNG, atomically: grey for 1 slice, 3 channels for 3, a horizontal strip for 5."""
    h, w, n = crop.shape
    img = crop[..., 0] if n == 1 else crop if n == 3 else crop.transpose(0, 2, 1).reshape(h, n * w)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise DataError(f"could not write {path}")


def load_crop(path: str | Path, n_slices: int) -> np.ndarray:
    """Inverse of :func:`save_crop`: uint8 (size, size, n_slices)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"crop {path} is missing or not a readable PNG")
    if n_slices == 1:
        return img[..., None] if img.ndim == 2 else img[..., :1]
    if n_slices == 3:
        if img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"crop {path} does not have 3 channels")
        return img
    h, w5 = img.shape[:2]
    return img.reshape(h, n_slices, w5 // n_slices).transpose(0, 2, 1)


def is_valid_crop(path: Path, cfg: CropConfig) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        return load_crop(path, cfg.n_slices).shape == (cfg.size, cfg.size, cfg.n_slices)
    except (DataError, ValueError):
        return False
