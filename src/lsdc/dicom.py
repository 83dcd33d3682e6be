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
import os
import re
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
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
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights for colour -> grey
_ORIENTATIONS = ("sagittal", "coronal", "axial")  # by the dominant LPS axis of the slice normal


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
    """
    path = Path(path)
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

    geometry = SliceGeometry(
        ipp=cast("tuple[float, float, float]", _floats(ds, "ImagePositionPatient", 3, path)),
        iop=cast("tuple[float, float, float, float, float, float]",
                 _floats(ds, "ImageOrientationPatient", 6, path)),
        spacing=cast("tuple[float, float]", _floats(ds, "PixelSpacing", 2, path)),
        rows=_positive_int(ds, "Rows", path),
        cols=_positive_int(ds, "Columns", path),
    )
    if min(geometry.spacing) <= 0:
        raise DataError(f"{path}: PixelSpacing {geometry.spacing} is not positive")
    iop = np.asarray(geometry.iop)
    if np.linalg.norm(np.cross(iop[:3], iop[3:])) < 1e-6:
        raise DataError(f"{path}: ImageOrientationPatient {geometry.iop} has parallel or zero vectors")
    return SliceHeader(
        path=path,
        instance_number=_instance_number(ds, path),
        geometry=geometry,
        slice_thickness=_optional_float(ds.get("SliceThickness")),
        spacing_between_slices=_optional_float(ds.get("SpacingBetweenSlices")),
        series_description=_optional_str(ds.get("SeriesDescription")),
        photometric=str(ds.PhotometricInterpretation).strip().upper(),
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
        self.normal = _common_normal([s.geometry for s in self.slices])
        centres = np.array([_centre(s.geometry) for s in self.slices])
        pos = centres @ self.normal
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
            arr = read_pixels(self.slices[i].path)
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
    out = arr.astype(np.float64)
    if slope is not None and slope != 1.0:
        out *= slope
    if intercept:
        out += intercept
    return out


def _value_range(arr: np.ndarray, ds: Dataset) -> tuple[float, float]:
    """Modality-mapped (min, max) of the values the stored pixels can take."""
    if np.issubdtype(arr.dtype, np.floating):
        return float(arr.min()), float(arr.max())
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if int(ds.get("PixelRepresentation") or 0):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    stored = np.arange(lo, hi + 1) if ds.get("ModalityLUTSequence") and hi - lo <= 1 << 16 \
        else np.array([lo, hi])
    mapped = _modality(stored, ds)
    return float(mapped.min()), float(mapped.max())


def _common_normal(geoms: list[SliceGeometry]) -> np.ndarray:
    """Mean of the slice normals (sign-aligned), flipped to make its dominant component positive."""
    normals = np.array([g.normal for g in geoms])
    signs = np.where(normals @ normals[0] < 0, -1.0, 1.0)
    n = (normals * signs[:, None]).sum(axis=0)
    n /= np.linalg.norm(n)
    return -n if n[int(np.argmax(np.abs(n)))] < 0 else n


def _centre(g: SliceGeometry) -> np.ndarray:
    """Patient coordinates (3,) of the image centre."""
    return pixel_to_patient(g, (g.cols - 1) / 2, (g.rows - 1) / 2)


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> tuple[float, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        raise DataError(f"{path}: missing tag {keyword}")
    items = [value] if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) else value
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: tag {keyword} is not numeric ({value!r})") from e
    if len(values) != n or not all(np.isfinite(values)):
        raise DataError(f"{path}: tag {keyword} should hold {n} finite numbers, got {value!r}")
    return values


def _positive_int(ds: Dataset, keyword: str, path: Path) -> int:
    value = ds.get(keyword)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise DataError(f"{path}: missing or invalid tag {keyword} ({value!r})")
    return number


def _instance_number(ds: Dataset, path: Path) -> int:
    value = ds.get("InstanceNumber")
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
