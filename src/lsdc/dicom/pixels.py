"""A slice's pixels as float32 in modality units, bright meaning high signal: decoded by pydicom, or read
straight from the file's bytes when its header found them native, with identical values."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from lsdc.dicom.header import SliceHeader, optional_float
from lsdc.dicom.pydicom_header import dcmread
from lsdc.errors import DataError

logger = logging.getLogger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights for colour -> grey


def read_pixels(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one slice to a float32 (rows, cols) array where bright means high signal.

    Any transfer syntax pydicom can decode with the installed plugins (native little/big endian,
    deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000) is accepted. The modality LUT
    is applied (RescaleSlope/RescaleIntercept, each defaulting to 1/0 when only one is present, or a
    Modality LUT Sequence). MONOCHROME1 is inverted within its value range: v -> lo + hi - v, where
    [lo, hi] is the modality-mapped range of the stored values (BitsStored, PixelRepresentation), so
    the result does not depend on the image content and slices of a series stay comparable. Colour
    images (RGB, YBR, PALETTE COLOR), which MR should never be, are converted to grey luminance.
    Multi-frame files, not known in the competition data, yield their first frame only
    (with a warning). Raises DataError naming the file if it cannot be read or decoded.
    """
    path = Path(path)
    ds: Dataset | None = None
    try:
        with path.open("rb") as f:
            ds = dcmread(f, path)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        if n_frames > 1:
            logger.warning("%s has %d frames; using the first only", path, n_frames)
        arr = pixel_array(ds, index=0)
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    except Exception as e:
        ts = ds.file_meta.get("TransferSyntaxUID") if ds is not None else None
        name = ts.name if ts is not None else "unknown transfer syntax"
        raise DataError(f"{path}: cannot decode pixel data ({name}): {type(e).__name__}: {e}") from e
    assert ds is not None
    return _grey_float(arr, ds)


def pixels_from_dataset(ds: Dataset) -> np.ndarray:
    """What :func:`read_pixels` gives, from a dataset already read with its pixel data (first frame)."""
    return _grey_float(pixel_array(ds, index=0), ds)


def read_slice(header: SliceHeader) -> np.ndarray:
    """Pixels of a slice whose header was read: :func:`read_pixels`, straight from the bytes when the
    header found them native (uncompressed little-endian greyscale), with identical values."""
    lay = header.layout
    if lay is None:
        return read_pixels(header.path)
    rows, cols = header.shape
    try:
        raw = np.fromfile(header.path, dtype=lay.dtype, count=rows * cols, offset=lay.offset)
    except (OSError, ValueError):
        raw = np.zeros(0)
    if raw.size != rows * cols:  # the file changed since its header was read: let pydicom say how
        return read_pixels(header.path)
    raw = raw.reshape(rows, cols)
    bits = 8 * raw.dtype.itemsize
    if lay.bits_stored < bits:  # as pydicom does: keep the stored bits, sign-extend signed values
        shift = bits - lay.bits_stored
        raw = (raw << shift) >> shift if raw.dtype.kind == "i" else raw & ((1 << lay.bits_stored) - 1)
    if lay.slope == 1.0 and lay.intercept == 0.0 and not lay.monochrome1:
        return raw.astype(np.float32)  # exact for integers below 2**24, as the float64 route
    out = rescale(raw, lay.slope, lay.intercept)
    if lay.monochrome1:
        lo, hi = rescale(stored_range(lay.bits_stored, raw.dtype.kind == "i"), lay.slope, lay.intercept)
        out = (lo + hi) - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _grey_float(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Decoded stored values -> float32 (rows, cols), modality units, bright = high signal."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if arr.ndim == 3:  # (rows, cols, samples): already RGB after pydicom's YBR conversion
        out = arr[..., :3].astype(np.float64) @ _LUMA
    elif photometric == "PALETTE COLOR":
        out = apply_color_lut(arr, ds).astype(np.float64) @ _LUMA
    else:
        out = _modality(arr, ds)
        if photometric == "MONOCHROME1":
            lo, hi = _value_range(arr, ds)
            out = (lo + hi) - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the Modality LUT Sequence, or RescaleSlope/RescaleIntercept (defaults 1 and 0)."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slope = optional_float(ds.get("RescaleSlope"))
    intercept = optional_float(ds.get("RescaleIntercept"))
    return rescale(arr, 1.0 if slope is None else slope, intercept or 0.0)


def rescale(arr: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values -> float64 modality units."""
    out = arr.astype(np.float64)
    if slope != 1.0:
        out *= slope
    if intercept:
        out += intercept
    return out


def stored_range(bits: int, signed: bool) -> np.ndarray:
    """[min, max] of the values ``bits`` stored bits can hold."""
    return np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1] if signed else [0, (1 << bits) - 1])


def _value_range(arr: np.ndarray, ds: Dataset) -> tuple[float, float]:
    """Modality-mapped (min, max) of the values the stored pixels can take."""
    if np.issubdtype(arr.dtype, np.floating):
        return float(arr.min()), float(arr.max())
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    lo, hi = (int(v) for v in stored_range(bits, bool(int(ds.get("PixelRepresentation") or 0))))
    stored = np.arange(lo, hi + 1) if ds.get("ModalityLUTSequence") and hi - lo <= 1 << 16 \
        else np.array([lo, hi])
    mapped = _modality(stored, ds)
    return float(mapped.min()), float(mapped.max())
