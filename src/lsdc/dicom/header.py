"""What a slice's header holds (SliceHeader, and NativeLayout: where native pixels lie in the file), built
from tag values the same way whichever reader read them, with the checks both readers make of the pixel data's
declared length."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class NativeLayout:
    """Where an uncompressed little-endian greyscale image lies in its file, learnt with the header.

    With it, :func:`read_slice` reads the pixels with one ``np.fromfile`` instead of a second parse of
    the whole file by pydicom; the values are exactly those of :func:`read_pixels`.
    """

    offset: int            # byte offset of the first pixel
    dtype: str             # numpy dtype of the stored values: '<u2', '<i2', '<u1' or '<i1'
    bits_stored: int
    slope: float           # RescaleSlope (1 when absent)
    intercept: float       # RescaleIntercept (0 when absent)
    monochrome1: bool


@dataclass(frozen=True)
class SliceHeader:
    """What the pipeline needs from one DICOM file, read without its pixels."""

    path: Path
    instance_number: int
    geometry: SliceGeometry
    slice_thickness: float | None          # mm; absent in some files
    spacing_between_slices: float | None   # mm; absent in some files
    series_description: str | None
    photometric: str                       # PhotometricInterpretation, e.g. "MONOCHROME2"
    layout: NativeLayout | None = field(default=None, compare=False, repr=False)  # None: decode with pydicom

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the image."""
        return self.geometry.rows, self.geometry.cols


def build_header(path: Path, get: Callable[[str], Any], layout: NativeLayout | None = None) -> SliceHeader:
    """A SliceHeader from tag values looked up by keyword (a pydicom Dataset's or the dicomsdl path's)."""
    geometry = SliceGeometry(
        ipp=cast("tuple[float, float, float]", _floats(get, "ImagePositionPatient", 3, path)),
        iop=cast("tuple[float, float, float, float, float, float]",
                 _floats(get, "ImageOrientationPatient", 6, path)),
        spacing=cast("tuple[float, float]", _floats(get, "PixelSpacing", 2, path)),
        rows=_positive_int(get, "Rows", path),
        cols=_positive_int(get, "Columns", path),
    )
    if min(geometry.spacing) <= 0:
        raise DataError(f"{path}: PixelSpacing {geometry.spacing} is not positive")
    a, b, c, d, e, f = geometry.iop
    if math.hypot(b * f - c * e, c * d - a * f, a * e - b * d) < 1e-6:
        raise DataError(f"{path}: ImageOrientationPatient {geometry.iop} has parallel or zero vectors")
    return SliceHeader(
        path=path,
        instance_number=_instance_number(get("InstanceNumber"), path),
        geometry=geometry,
        slice_thickness=optional_float(get("SliceThickness")),
        spacing_between_slices=optional_float(get("SpacingBetweenSlices")),
        series_description=_optional_str(get("SeriesDescription")),
        photometric=str(get("PhotometricInterpretation")).strip().upper(),
        layout=layout,
    )


def check_native_length(path: Path, start: int, length: int, size: int) -> None:
    """Raise DataError if native pixel data of ``length`` bytes from ``start`` runs past the file's end."""
    if start + length > size:
        raise DataError(f"{path}: truncated: pixel data declares {length} bytes, file holds {size - start}")


def check_native_size(path: Path, length: int, rows: int, cols: int, expected: int) -> None:
    """Raise DataError if native pixel data of ``length`` bytes is short of the image's ``expected`` bytes."""
    if length < expected:
        raise DataError(f"{path}: truncated: pixel data has {length} bytes, {rows}x{cols} image needs {expected}")


def _floats(get: Callable[[str], Any], keyword: str, n: int, path: Path) -> tuple[float, ...]:
    value = get(keyword)
    if value is None or value == "":
        raise DataError(f"{path}: missing tag {keyword}")
    items = [value] if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) else value
    try:
        values = tuple([float(v) for v in items])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: tag {keyword} is not numeric ({value!r})") from e
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise DataError(f"{path}: tag {keyword} should hold {n} finite numbers, got {value!r}")
    return values


def _positive_int(get: Callable[[str], Any], keyword: str, path: Path) -> int:
    value = get(keyword)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise DataError(f"{path}: missing or invalid tag {keyword} ({value!r})")
    return number


def _instance_number(value: Any, path: Path) -> int:
    if value not in (None, ""):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: tag InstanceNumber is not an integer ({value!r})") from None
    try:
        return int(path.stem)
    except ValueError:
        raise DataError(f"{path}: missing tag InstanceNumber and the file name is not a number") from None


def optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _optional_str(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
