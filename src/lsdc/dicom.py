"""Reading DICOM slices and series: the only module in the project that touches pydicom.

Headers are read without pixel data so that a whole series can be listed, sorted and projected in
milliseconds; pixels are decoded only for the slices a caller asks for. Slices are ordered by their
position along the series' slice normal, never by file name or InstanceNumber (both are unreliable
in the competition data).

Pixel values come back as float32 (rows, cols) arrays in modality units (RescaleSlope and
RescaleIntercept applied), with bright always meaning high signal (MONOCHROME1 is inverted). No
VOI LUT or windowing is applied: intensity normalisation belongs to the caller.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry, nearest_slice, pixel_to_patient
from lsdc.io import atomic_path

logger = logging.getLogger(__name__)

# Elements read by read_header: geometry, identity, and what is needed to check the pixel data length.
_HEADER_TAGS: list[str] = [
    "SOPClassUID",
    "SeriesDescription",
    "SliceThickness",
    "SpacingBetweenSlices",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
]
_PIXEL_TAGS = {(0x7FE0, 0x0008), (0x7FE0, 0x0009), (0x7FE0, 0x0010)}
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_ITEM_DELIMITER = (0xFFFE, 0xE00D)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights for colour -> grey
_ORIENTATIONS = ("sagittal", "coronal", "axial")  # by the dominant LPS axis of the slice normal


@dataclass(frozen=True)
class NativeLayout:
    """Where an uncompressed little-endian greyscale image lies in its file, learnt with the header.

    With it, :func:`read_slice` reads the pixels with one ``np.fromfile`` instead of a second parse of
    the whole file by pydicom; the values are exactly those of :func:`read_pixels`.
    """

    offset: int            # byte offset of the first pixel
    dtype: str             # numpy dtype of the stored values: '<u2', '<i2', 'u1' or 'i1'
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


# --------------------------------------------------------------------------------------------------
# Single files


def read_header(path: str | os.PathLike[str]) -> SliceHeader:
    """Read one slice's header without decoding (or even loading) its pixel data.

    Also checks cheaply that the pixel data is all there (its declared length against the file size,
    or the fragment items of compressed data), so that truncated files are rejected when a series
    is listed rather than when a crop is cut. Raises DataError naming the file, and the tag when
    one is missing or malformed. InstanceNumber falls back to the file name's stem.

    Files in explicit VR little endian (the competition's encoding, compressed or not) are parsed by
    a small reader of the first kilobytes, several times faster than pydicom; anything it does not
    handle, and every file it finds fault with, goes through pydicom, which gives the error message.
    """
    path = Path(path)
    try:
        fast = _fast_header(path)
    except (OSError, DataError, ValueError, struct.error):
        fast = None
    return fast if fast is not None else _pydicom_header(path)


def _pydicom_header(path: Path) -> SliceHeader:
    """read_header through pydicom: every encoding, and the precise error messages."""
    try:
        with path.open("rb") as f:
            ds = _dcmread(f, path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            _check_pixel_data(f, ds, path)
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    except Exception as e:
        raise DataError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    return _build_header(path, ds.get)


def _build_header(path: Path, get: Callable[[str], Any], layout: NativeLayout | None = None) -> SliceHeader:
    """A SliceHeader from tag values looked up by keyword (a pydicom Dataset's or the fast reader's)."""
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
        slice_thickness=_optional_float(get("SliceThickness")),
        spacing_between_slices=_optional_float(get("SpacingBetweenSlices")),
        series_description=_optional_str(get("SeriesDescription")),
        photometric=str(get("PhotometricInterpretation")).strip().upper(),
        layout=layout,
    )


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
            ds = _dcmread(f, path)
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
    return _to_grey_float(arr, ds)


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
    out = _rescale(raw, lay.slope, lay.intercept)
    if lay.monochrome1:
        lo, hi = _rescale(_stored_range(lay.bits_stored, raw.dtype.kind == "i"), lay.slope, lay.intercept)
        out = (lo + hi) - out
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Series


@dataclass
class Series:
    """The slices of one series, sorted along the series' slice normal, with lazily read pixels.

    ``slices`` may be given in any order: they are sorted on construction by ``positions``, the
    distance in mm of each slice's centre along ``normal``. ``normal`` is the mean of the slices'
    normals (sign-aligned), flipped so that its dominant LPS component is positive. Index 0 is thus
    the patient's right-most slice of a sagittal series (x grows to the patient's left), the
    lowest (most inferior) of an axial one, the most anterior of a coronal one. Using slice centres
    and a common normal keeps several oblique blocks of one axial series in a sensible order;
    for parallel slices it is the same as sorting by ImagePositionPatient along their normal.
    """

    study_id: int | None
    series_id: int | None
    slices: list[SliceHeader]
    description: str | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files and why
    directory: Path | None = None
    normal: np.ndarray = field(init=False, repr=False, compare=False)     # (3,) unit vector, LPS
    positions: np.ndarray = field(init=False, repr=False, compare=False)  # (n,) mm, ascending
    _cache: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)
    _by_instance: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.slices:
            raise DataError(f"{self.name}: series has no slices")
        geoms = [s.geometry for s in self.slices]
        iop = np.array([g.iop for g in geoms])  # (n, 6)
        self.normal = _common_normal(np.cross(iop[:, :3], iop[:, 3:]))
        pos = _centres(geoms, iop) @ self.normal
        order = sorted(range(len(self.slices)),
                       key=lambda i: (pos[i], self.slices[i].instance_number, str(self.slices[i].path)))
        self.slices = [self.slices[i] for i in order]
        self.positions = pos[order]
        self._cache = {}
        self._by_instance = {}
        for i, s in enumerate(self.slices):
            self._by_instance.setdefault(s.instance_number, i)
        dupes = [n for n, c in Counter(self.instance_numbers).items() if c > 1]
        if dupes:
            logger.warning("%s: duplicate instance numbers %s; index_of_instance returns the first",
                           self.name, sorted(dupes))

    @property
    def name(self) -> str:
        """How error messages refer to this series."""
        if self.study_id is not None or self.series_id is not None:
            return f"series {self.study_id}/{self.series_id}"
        return f"series {self.directory}" if self.directory is not None else "series"

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def instance_numbers(self) -> list[int]:
        """InstanceNumber of each slice, in slice order (not necessarily contiguous or sorted)."""
        return [s.instance_number for s in self.slices]

    @property
    def orientation(self) -> str:
        """'sagittal', 'coronal' or 'axial', from the dominant LPS axis of the slice normal."""
        return _ORIENTATIONS[int(np.argmax(np.abs(self.normal)))]

    @property
    def is_sagittal(self) -> bool:
        return self.orientation == "sagittal"

    @property
    def is_axial(self) -> bool:
        return self.orientation == "axial"

    @property
    def slice_spacing(self) -> float | None:
        """Median distance in mm between neighbouring slices; None for a single slice."""
        if len(self.slices) < 2:
            return None
        return float(np.median(np.diff(self.positions)))

    def index_of_instance(self, instance_number: int) -> int:
        """Slice index of an InstanceNumber (as in train_label_coordinates.csv)."""
        try:
            return self._by_instance[int(instance_number)]
        except KeyError:
            raise DataError(f"{self.name}: no slice with instance number {instance_number}") from None

    def geometries(self) -> list[SliceGeometry]:
        """Geometry of each slice, in slice order; shapes and spacings may differ between slices."""
        return [s.geometry for s in self.slices]

    def image(self, i: int) -> np.ndarray:
        """Pixels of slice i, float32 (rows, cols), decoded on first use and cached.

        The cached array is read-only so that callers cannot corrupt it; copy it to modify it.
        """
        i = range(len(self.slices))[i]  # normalises negative indices, raises IndexError
        if i not in self._cache:
            arr = read_slice(self.slices[i])
            arr.flags.writeable = False
            self._cache[i] = arr
        return self._cache[i]

    def images(self, indices: Iterable[int]) -> list[np.ndarray]:
        """Pixels of several slices; a list because shapes may differ within a series."""
        return [self.image(i) for i in indices]

    def clear_cache(self) -> None:
        """Forget decoded pixels (a long axial series is about 1 MB per slice)."""
        self._cache.clear()

    def pixel_to_patient(self, i: int, x: float, y: float) -> np.ndarray:
        """Patient LPS coordinates (3,) in mm of pixel (x=column, y=row) on slice i."""
        return pixel_to_patient(self.slices[i].geometry, x, y)

    def project(self, point_lps: Sequence[float] | np.ndarray) -> tuple[int, float, float, float]:
        """Nearest slice to a patient point (mm, LPS): (index, x, y, |distance| in mm)."""
        return nearest_slice(self.geometries(), np.asarray(point_lps, dtype=float))


def load_series(
    series_dir: str | os.PathLike[str],
    study_id: int | None = None,
    series_id: int | None = None,
    description: str | None = None,
) -> Series:
    """Read the headers of every file in a series folder and sort the slices by position.

    Files that cannot be read (corrupt, truncated, not DICOM, missing geometry) are skipped with a
    logged warning naming the file and the reason, and listed in ``Series.skipped``; hidden files
    (dot files) and sub-folders are ignored. study_id and series_id default to the names of the
    folder's parent and of the folder when those are integers, description to the slices' common
    SeriesDescription. Raises DataError naming the folder if it is missing or holds no readable slice.
    """
    directory = Path(series_dir)
    if not directory.is_dir():
        raise DataError(f"series folder {directory} does not exist")
    files = sorted((p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=_natural_key)
    headers: list[SliceHeader] = []
    skipped: list[tuple[Path, str]] = []
    for p in files:
        try:
            headers.append(read_header(p))
        except DataError as e:
            logger.warning("skipping %s", e)
            skipped.append((p, str(e)))
    if not headers:
        raise DataError(f"series folder {directory}: no readable DICOM slice among {len(files)} files")
    if description is None:
        found = {h.series_description for h in headers} - {None}
        description = found.pop() if len(found) == 1 else None
    return Series(
        study_id=_int_or_none(directory.parent.name) if study_id is None else int(study_id),
        series_id=_int_or_none(directory.name) if series_id is None else int(series_id),
        slices=headers,
        description=description,
        skipped=skipped,
        directory=directory,
    )


def list_series(study_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """Series folders of a study folder, {series_id: path}, sorted by id; non-numeric names ignored."""
    directory = Path(study_dir)
    if not directory.is_dir():
        raise DataError(f"study folder {directory} does not exist")
    found = {int(p.name): p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()}
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------------------------------
# Writing (synthetic data and tests)


def write_slice(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    geometry: SliceGeometry,
    instance_number: int,
    series_description: str | None = None,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str | None = None,
    series_number: int | None = None,
    frame_of_reference_uid: str | None = None,
    slice_thickness: float | None = None,
    spacing_between_slices: float | None = None,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **encoding_kwargs: Any,
) -> Path:
    """Write one single-frame MR slice the way the competition files look, so tests and the
    synthetic generator exercise the same reader as the real data.

    ``pixels`` is an integer (rows, cols) array matching ``geometry``; int16 is stored signed
    (PixelRepresentation 1), anything else must fit uint16 and is stored unsigned. Pass the same
    ``study_uid``/``series_uid``/``frame_of_reference_uid`` to every slice of a series (new random
    UIDs otherwise; pass ``sop_uid`` too for byte-identical reruns). Written atomically.

    Tags written. File meta: MediaStorageSOPClassUID, MediaStorageSOPInstanceUID, TransferSyntaxUID,
    ImplementationClassUID. Dataset: SOPClassUID (MR Image Storage), SOPInstanceUID,
    StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID, Modality ("MR"), SeriesNumber (if
    given), SeriesDescription (if given), InstanceNumber, ImagePositionPatient,
    ImageOrientationPatient, SliceLocation (IPP along the slice normal), PixelSpacing,
    SliceThickness / SpacingBetweenSlices / RescaleSlope / RescaleIntercept (each only if given),
    SamplesPerPixel (1), PhotometricInterpretation, Rows, Columns, BitsAllocated (16), BitsStored,
    HighBit, PixelRepresentation, PixelData.

    ``transfer_syntax``: explicit or implicit VR little endian, deflated, or any syntax pydicom can
    encode (here RLE Lossless and, with pylibjpeg-openjpeg, JPEG 2000; ``encoding_kwargs`` such as
    ``j2k_cr=[20]`` go to ``Dataset.compress``). Returns the path written.
    """
    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.shape != (geometry.rows, geometry.cols):
        raise ValueError(f"pixels {pixels.shape} do not match geometry ({geometry.rows}, {geometry.cols})")
    if not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(f"pixels must be integers, got {pixels.dtype}")
    signed = pixels.dtype == np.int16
    if not signed:
        if pixels.size and (pixels.min() < 0 or pixels.max() > 0xFFFF):
            raise ValueError("unsigned pixels must lie in 0..65535 (pass int16 for signed data)")
        pixels = pixels.astype(np.uint16)
    ts = UID(transfer_syntax)

    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts if not ts.is_compressed else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.Modality = "MR"
    if patient_id is not None:
        ds.PatientID = ds.StudyID = patient_id
    if series_number is not None:
        ds.SeriesNumber = int(series_number)
    if series_description is not None:
        ds.SeriesDescription = series_description
    ds.InstanceNumber = int(instance_number)
    ds.ImagePositionPatient = [_ds_value(v) for v in geometry.ipp]
    ds.ImageOrientationPatient = [_ds_value(v) for v in geometry.iop]
    ds.SliceLocation = _ds_value(float(np.dot(geometry.ipp, geometry.normal)))
    ds.PixelSpacing = [_ds_value(v) for v in geometry.spacing]
    if slice_thickness is not None:
        ds.SliceThickness = _ds_value(slice_thickness)
    if spacing_between_slices is not None:
        ds.SpacingBetweenSlices = _ds_value(spacing_between_slices)
    if rescale_intercept is not None:
        ds.RescaleIntercept = _ds_value(rescale_intercept)
    if rescale_slope is not None:
        ds.RescaleSlope = _ds_value(rescale_slope)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2" if signed else "<u2").tobytes()
    ds["PixelData"].VR = "OW"
    if ts.is_compressed:
        ds.compress(ts, generate_instance_uid=False, **encoding_kwargs)
    elif ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        raise ValueError(f"write_slice does not write transfer syntax {ts.name}")
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------------
# Helpers


# The fast header reader. It walks the elements of an explicit VR little endian file up to the pixel
# data, keeping the raw bytes of the tags read_header needs, and returns None (pydicom then reads the
# file) for anything else: another encoding, a malformed element, a missing or odd value.

_FAST_TAGS: dict[int, str] = {
    0x00020010: "TransferSyntaxUID",
    0x00080005: "SpecificCharacterSet",
    0x0008103E: "SeriesDescription",
    0x00180050: "SliceThickness",
    0x00180088: "SpacingBetweenSlices",
    0x00200013: "InstanceNumber",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
    0x00280002: "SamplesPerPixel",
    0x00280004: "PhotometricInterpretation",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280030: "PixelSpacing",
    0x00280100: "BitsAllocated",
    0x00280101: "BitsStored",
    0x00280103: "PixelRepresentation",
    0x00281052: "RescaleIntercept",
    0x00281053: "RescaleSlope",
    0x00283000: "ModalityLUTSequence",
}
_US_TAGS = {"SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"}
_MULTI_TAGS = {"ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"}
_SHORT_LENGTH_VRS = frozenset(
    vr.encode() for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH",
                           "SL", "SS", "ST", "TM", "UI", "UL", "US"))
_SHORT_ELEMENT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_LONG_LENGTH = struct.Struct("<I")        # the 32-bit length after the 2 reserved bytes of OB, SQ, ...
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_FIRST_READ = 16384  # bytes: the whole header of a typical MR file


class _NeedMore(Exception):
    """The header runs past the bytes read so far."""


class _Unsupported(Exception):
    """Not a file for the fast reader: pydicom reads it."""


def _fast_header(path: Path) -> SliceHeader | None:
    """read_header for explicit VR little endian files without pydicom; None for any other file."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = f.read(_FIRST_READ)
        while True:
            try:
                raw, pixel_pos, pixel_len = _walk(buf)
                break
            except _NeedMore:
                if len(buf) >= size:
                    return None  # truncated before the pixel data
                buf += f.read(max(len(buf) * 3, _FIRST_READ))
            except _Unsupported:
                return None
        values = {k: _fast_value(k, v) for k, v in raw.items()}
        if values.get("SpecificCharacterSet") not in (None, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"):
            return None
        for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
            if values.get(keyword) in (None, ""):
                return None
        ts = UID(cast(str, values["TransferSyntaxUID"]))
        frames = int(values.get("NumberOfFrames") or 1)
        spp = int(values.get("SamplesPerPixel") or 1)
        if pixel_len == _UNDEFINED:
            if not ts.is_compressed:
                return None
            _check_fragments(f, pixel_pos, size, path)
            layout = None
        else:
            bits = int(values["BitsAllocated"])
            needed = (int(values["Rows"]) * int(values["Columns"]) * frames * spp * bits + 7) // 8
            if ts.is_compressed or pixel_pos + pixel_len > size or pixel_len < needed:
                return None
            layout = _native_layout(values, pixel_pos, frames, spp)
    return _build_header(path, values.get, layout)


def _walk(buf: bytes) -> tuple[dict[str, bytes], int, int]:
    """Raw values of the wanted top-level elements, and the pixel data's value offset and length.

    The loop is _element inlined: it runs for every element of every file a series holds.
    """
    if len(buf) < 132:
        raise _NeedMore
    if buf[128:132] != b"DICM":
        raise _Unsupported
    pos, n, raw, in_meta = 132, len(buf), {}, True
    unpack_short, unpack_long = _SHORT_ELEMENT.unpack_from, _LONG_LENGTH.unpack_from
    while True:
        if pos + 8 > n:
            raise _NeedMore
        group, elem, vr, length = unpack_short(buf, pos)
        if vr in _LONG_LENGTH_VRS:
            if pos + 12 > n:
                raise _NeedMore
            length, start = unpack_long(buf, pos + 8)[0], pos + 12
        elif vr in _SHORT_LENGTH_VRS:
            start = pos + 8
        else:
            raise _Unsupported
        tag = group << 16 | elem
        if in_meta and group != 0x0002:
            ts = raw.get("TransferSyntaxUID", b"").rstrip(b"\0 ").decode("ascii", "replace")
            if not ts or ts in (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
                raise _Unsupported
            in_meta = False
        if tag == _PIXEL_DATA:
            return raw, start, length
        if tag > _PIXEL_DATA or group == 0xFFFE:
            raise _Unsupported
        keyword = _FAST_TAGS.get(tag)
        if length == _UNDEFINED:
            if vr != b"SQ":
                raise _Unsupported
            if keyword:
                raw[keyword] = b"SQ"
            pos = _skip_sequence(buf, start)
            continue
        pos = start + length
        if keyword:
            if pos > n:
                raise _NeedMore
            raw[keyword] = buf[start:pos]


def _element(buf: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value offset, value length) of the explicit VR little endian element at ``pos``."""
    if pos + 8 > len(buf):
        raise _NeedMore
    group, elem, vr, length = _SHORT_ELEMENT.unpack_from(buf, pos)
    if vr in _LONG_LENGTH_VRS:
        if pos + 12 > len(buf):
            raise _NeedMore
        return group << 16 | elem, vr, pos + 12, _LONG_LENGTH.unpack_from(buf, pos + 8)[0]
    if vr not in _SHORT_LENGTH_VRS:
        raise _Unsupported
    return group << 16 | elem, vr, pos + 8, length


def _skip_sequence(buf: bytes, pos: int) -> int:
    """Offset just past an undefined-length sequence whose first item starts at ``pos``."""
    while True:
        if pos + 8 > len(buf):
            raise _NeedMore
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        pos += 8
        if (group, elem) == _SEQUENCE_DELIMITER:
            return pos
        if (group, elem) != _ITEM:
            raise _Unsupported
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements, then the item delimiter
            if pos + 8 > len(buf):
                raise _NeedMore
            if struct.unpack_from("<HH", buf, pos) == _ITEM_DELIMITER:
                pos += 8
                break
            _, vr, start, length = _element(buf, pos)
            if length == _UNDEFINED:
                if vr != b"SQ":
                    raise _Unsupported
                pos = _skip_sequence(buf, start)
            else:
                pos = start + length


def _fast_value(keyword: str, raw: bytes) -> Any:
    """A raw value as pydicom would give it, near enough for _build_header (str, list of str, int)."""
    if keyword == "ModalityLUTSequence":
        return raw
    if keyword in _US_TAGS:
        if len(raw) != 2:
            raise _Unsupported
        return struct.unpack("<H", raw)[0]
    try:
        text = raw.decode("ascii").strip("\0 ")
    except UnicodeDecodeError:
        raise _Unsupported from None
    if keyword in _MULTI_TAGS:
        return [v.strip() for v in text.split("\\")] if text else ""
    if "\\" in text:  # a multi-valued SliceThickness or the like: pydicom's business
        raise _Unsupported
    return text


def _native_layout(values: dict[str, Any], offset: int, frames: int, spp: int) -> NativeLayout | None:
    """The NativeLayout of uncompressed pixel data, if read_slice can read it exactly as pydicom would."""
    if str(values["TransferSyntaxUID"]) != ExplicitVRLittleEndian or frames != 1 or spp != 1:
        return None
    photometric = str(values["PhotometricInterpretation"]).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or "ModalityLUTSequence" in values:
        return None
    allocated = int(values["BitsAllocated"])
    stored = int(values.get("BitsStored") or allocated)
    if allocated not in (8, 16) or not 1 <= stored <= allocated:
        return None
    signed = bool(values.get("PixelRepresentation") or 0)
    slope = _optional_float(values.get("RescaleSlope"))
    intercept = _optional_float(values.get("RescaleIntercept"))
    return NativeLayout(
        offset=offset,
        dtype=("<i" if signed else "<u") + str(allocated // 8),
        bits_stored=stored,
        slope=1.0 if slope is None else slope,
        intercept=intercept or 0.0,
        monochrome1=photometric == "MONOCHROME1",
    )


def _dcmread(f: BinaryIO, path: Path, **kwargs: Any) -> Dataset:
    """dcmread, falling back to files without the 128-byte preamble and file meta header."""
    try:
        return pydicom.dcmread(f, **kwargs)
    except InvalidDicomError:
        f.seek(0)
        ds = pydicom.dcmread(f, force=True, **kwargs)
        if "SOPClassUID" not in ds:
            raise DataError(f"{path}: not a DICOM file (no 'DICM' prefix and no SOP Class UID)") from None
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little
                else ExplicitVRBigEndian
            )
        return ds


def _check_pixel_data(f: BinaryIO, ds: Dataset, path: Path) -> None:
    """Check that the pixel data element after a stop_before_pixels read is complete.

    ``f`` must be positioned where dcmread stopped, at the pixel data element. Native data: the
    declared length must fit in the file and cover Rows x Columns x frames. Encapsulated data: the
    fragment items must lead to a sequence delimiter within the file. Deflated files are not checked
    here (the file is not the dataset stream); decoding catches their faults.
    """
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, ""):
            raise DataError(f"{path}: missing tag {keyword}")
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and UID(ts).is_deflated:
        return
    pos = f.tell()
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise DataError(f"{path}: no pixel data (file ends at byte {pos}; truncated?)")
    implicit, little = ds.original_encoding
    endian = "<" if little else ">"
    tag = struct.unpack(endian + "HH", head[:4])
    if tag not in _PIXEL_TAGS:
        return  # not positioned on pixel data: leave it to the decoder
    if implicit:
        length, start = struct.unpack(endian + "I", head[4:])[0], pos + 8
    elif head[4:6] in _LONG_LENGTH_VRS:
        rest = f.read(4)
        if len(rest) < 4:
            raise DataError(f"{path}: truncated inside the pixel data element header")
        length, start = struct.unpack(endian + "I", rest)[0], pos + 12
    else:
        length, start = struct.unpack(endian + "H", head[6:])[0], pos + 8
    if length == 0xFFFFFFFF:
        _check_fragments(f, start, size, path)
        return
    if start + length > size:
        raise DataError(f"{path}: truncated: pixel data declares {length} bytes, file holds {size - start}")
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    expected = get_expected_length(ds, "bytes")
    if length < expected:
        raise DataError(f"{path}: truncated: pixel data has {length} bytes, "
                        f"{ds.Rows}x{ds.Columns} image needs {expected}")


def _check_fragments(f: BinaryIO, offset: int, size: int, path: Path) -> None:
    """Walk the items of encapsulated pixel data (8-byte reads only) up to the sequence delimiter."""
    while True:
        if offset + 8 > size:
            raise DataError(f"{path}: truncated: compressed pixel data ends without its delimiter")
        f.seek(offset)
        group, elem, length = struct.unpack("<HHI", f.read(8))
        if (group, elem) == _SEQUENCE_DELIMITER:
            return
        if (group, elem) != _ITEM:
            raise DataError(f"{path}: malformed compressed pixel data at byte {offset}")
        offset += 8 + length


def _to_grey_float(arr: np.ndarray, ds: Dataset) -> np.ndarray:
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
    slope = _optional_float(ds.get("RescaleSlope"))
    intercept = _optional_float(ds.get("RescaleIntercept"))
    return _rescale(arr, 1.0 if slope is None else slope, intercept or 0.0)


def _rescale(arr: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values -> float64 modality units."""
    out = arr.astype(np.float64)
    if slope != 1.0:
        out *= slope
    if intercept:
        out += intercept
    return out


def _stored_range(bits: int, signed: bool) -> np.ndarray:
    """[min, max] of the values ``bits`` stored bits can hold."""
    return np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1] if signed else [0, (1 << bits) - 1])


def _value_range(arr: np.ndarray, ds: Dataset) -> tuple[float, float]:
    """Modality-mapped (min, max) of the values the stored pixels can take."""
    if np.issubdtype(arr.dtype, np.floating):
        return float(arr.min()), float(arr.max())
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    lo, hi = (int(v) for v in _stored_range(bits, bool(int(ds.get("PixelRepresentation") or 0))))
    stored = np.arange(lo, hi + 1) if ds.get("ModalityLUTSequence") and hi - lo <= 1 << 16 \
        else np.array([lo, hi])
    mapped = _modality(stored, ds)
    return float(mapped.min()), float(mapped.max())


def _common_normal(normals: np.ndarray) -> np.ndarray:
    """Mean of the slice normals (n, 3) (sign-aligned, any length), flipped to make its dominant
    component positive."""
    normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    signs = np.where(normals @ normals[0] < 0, -1.0, 1.0)
    n = (normals * signs[:, None]).sum(axis=0)
    n /= np.linalg.norm(n)
    return -n if n[int(np.argmax(np.abs(n)))] < 0 else n


def _centres(geoms: list[SliceGeometry], iop: np.ndarray) -> np.ndarray:
    """Patient coordinates (n, 3) of the image centres (pixel_to_patient of each, vectorised)."""
    ipp = np.array([g.ipp for g in geoms])
    half = np.array([[(g.cols - 1) / 2 * g.spacing[1], (g.rows - 1) / 2 * g.spacing[0]] for g in geoms])
    return ipp + half[:, :1] * iop[:, :3] + half[:, 1:] * iop[:, 3:]


def _floats(get: Callable[[str], Any], keyword: str, n: int, path: Path) -> tuple[float, ...]:
    value = get(keyword)
    if value is None or value == "":
        raise DataError(f"{path}: missing tag {keyword}")
    items = [value] if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) else value
    try:
        values = tuple(float(v) for v in items)
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
        return int(value)
    try:
        return int(path.stem)
    except ValueError:
        raise DataError(f"{path}: missing tag InstanceNumber and the file name is not a number") from None


def _optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _optional_str(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _natural_key(p: Path) -> tuple[int, int | str]:
    """Sort '2.dcm' before '10.dcm' (only for stable logging; slices are sorted by geometry)."""
    return (0, int(p.stem)) if re.fullmatch(r"\d+", p.stem) else (1, p.name)


def _ds_value(v: float) -> str:
    """A valid DS string (at most 16 characters) for a float, as precise as DS allows."""
    return format_number_as_ds(float(v))
