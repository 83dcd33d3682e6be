"""Reading one DICOM slice: its header without the pixels, and its pixels as float32 in modality units.

Headers of native little-endian greyscale files (the competition's) are read with dicomsdl, a C++
reader several times faster than pydicom, which also gives where the pixel data starts, so that
:func:`read_slice` reads those pixels with one ``np.fromfile``. dicomsdl is only ever asked for the
elements before the pixel data (``load_until``): its full open and its decoders crash the process on
truncated and on some valid compressed files, and reading on to the pixel data element loads its whole value.
The pixel data element itself (where its value starts, its length, the fragments of compressed data) is
parsed by pydicom's element reader, on both paths: this module parses no DICOM element of its own. Every
other file, and every file the dicomsdl path finds anything unusual in, is read by pydicom, the reference,
which also words the error messages.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.util.leanread import data_element_generator as lean_elements

from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry

try:  # optional: without it (a Kaggle notebook that lacks the wheel) pydicom reads every header, slower
    import dicomsdl
except ImportError:
    dicomsdl = None

logger = logging.getLogger(__name__)

if dicomsdl is not None:
    # dicomsdl logs every fault to stderr before raising it; here a fault only sends the file to pydicom.
    dicomsdl.set_loglevel(dicomsdl.LogLevel.DISABLE)

# Elements pydicom reads for read_header: geometry, identity, and what is needed to check the pixel data.
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
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, _PIXEL_DATA}  # float, double float and integer pixel data
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights for colour -> grey

# The dicomsdl path. load_until: dicomsdl stops before the first element past this tag, the pixel data.
# Asking it for any later tag makes it read on, into the pixels (and crash on a truncated file).
_BEFORE_PIXELS = 0x7FE00000
_IMPLICIT_VR = {ExplicitVRLittleEndian: False, ImplicitVRLittleEndian: True}  # the syntaxes it reads
_CHARSETS = {None, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"}  # decoded by dicomsdl exactly as pydicom
# Values as dicomsdl gives them: str, int, a list when multi-valued, a sequence object; None when absent.
# An empty US comes as 0, which the checks refuse for all of these.
_VALUES = ["TransferSyntaxUID", "SpecificCharacterSet", "SeriesDescription", "PhotometricInterpretation",
           "ModalityLUTSequence", "SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "BitsStored"]
# Values read from their bytes, in tag order: DS and IS text with float() and int(), as pydicom reads them
# (dicomsdl reads '' as 0 and '3abc' as 3), and PixelRepresentation, where 0 is a valid value.
_NUMBERS: list[tuple[str, int, str]] = [
    ("SliceThickness", 0x00180050, "DS"),
    ("SpacingBetweenSlices", 0x00180088, "DS"),
    ("InstanceNumber", 0x00200013, "IS"),
    ("ImagePositionPatient", 0x00200032, "DS*"),  # *: multi-valued, a list
    ("ImageOrientationPatient", 0x00200037, "DS*"),
    ("NumberOfFrames", 0x00280008, "IS"),
    ("PixelSpacing", 0x00280030, "DS*"),
    ("PixelRepresentation", 0x00280103, "US"),
    ("RescaleIntercept", 0x00281052, "DS"),
    ("RescaleSlope", 0x00281053, "DS"),
]
_UNDEFINED = 0xFFFFFFFF
_AHEAD = 1024  # bytes first read after dicomsdl's elements: a few short elements, then the pixel data's header


class _Declined(Exception):
    """The dicomsdl path does not read this file: pydicom does."""


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


def read_header(path: str | os.PathLike[str]) -> SliceHeader:
    """Read one slice's header without decoding (or even loading) its pixel data.

    Also checks cheaply that the pixel data is all there (its declared length against the file size,
    or the fragment items of compressed data), so that truncated files are rejected when a series
    is listed rather than when a crop is cut. Raises DataError naming the file, and the tag when
    one is missing or malformed. InstanceNumber falls back to the file name's stem.

    Native little-endian greyscale files are read by dicomsdl, with the pixels' offset (the header
    then has a ``layout``); any other file, and any file that path finds unusual, by pydicom.
    """
    path = Path(path)
    header = _dicomsdl_header(path)
    return header if header is not None else _pydicom_header(path)


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
    out = _rescale(raw, lay.slope, lay.intercept)
    if lay.monochrome1:
        lo, hi = _rescale(_stored_range(lay.bits_stored, raw.dtype.kind == "i"), lay.slope, lay.intercept)
        out = (lo + hi) - out
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Headers through dicomsdl


def _dicomsdl_header(path: Path) -> SliceHeader | None:
    """read_header of a native little-endian greyscale file, with its NativeLayout; None: pydicom reads it.

    Raises only for pixel data that the file does not hold entirely, with pydicom's message.
    """
    if dicomsdl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        # Only files with the DICOM preamble go to dicomsdl (an empty file corrupts its heap).
        if os.pread(fd, 132, 0)[128:] != b"DICM":
            return None
        ds, values, implicit, end = _dicomsdl_values(path)
        pixels = _pixel_element(fd, ds, end, implicit)
    except (_Declined, OSError):
        return None
    finally:
        os.close(fd)
    if pixels is None:
        return None
    start, length = pixels
    try:
        header = _build_header(path, values.get, _native_layout(values, start))
    except DataError:
        return None  # pydicom words it
    rows, cols = header.shape
    _check_native_length(path, start, length, size)
    _check_native_size(path, length, rows, cols, rows * cols * values["BitsAllocated"] // 8)
    return header


def _dicomsdl_values(path: Path) -> tuple[Any, dict[str, Any], bool, int]:
    """The dicomsdl dataset (elements before the pixel data), the values read_header and the layout
    need, whether the file is implicit VR, and where the highest-tag element of ``_NUMBERS`` ends.

    Raises _Declined for any file read_slice could not read natively, or whose values are unusual.
    """
    try:
        ds = dicomsdl.open_file(str(path), _BEFORE_PIXELS)
        values = dict(zip(_VALUES, ds.getValues(_VALUES), strict=True))
        implicit = _IMPLICIT_VR.get(values["TransferSyntaxUID"])
        if (implicit is None or values["SpecificCharacterSet"] not in _CHARSETS
                or values["PhotometricInterpretation"] not in ("MONOCHROME1", "MONOCHROME2")
                or values["ModalityLUTSequence"] is not None
                or not isinstance(values["SeriesDescription"], (str, type(None)))):
            raise _Declined
        last = None
        for keyword, tag, vr in _NUMBERS:
            de = ds.getDataElement(tag)
            raw = de.toBytes()
            if vr == "US":
                if len(raw) != 2:
                    raise _Declined  # absent, empty or multi-valued: pydicom's business
                values[keyword] = de.toLong()
            else:
                values[keyword] = _numbers(raw, int if vr == "IS" else float, vr == "DS*")
            if raw:
                last = de
        if not (values["SamplesPerPixel"] == 1 and values["NumberOfFrames"] in (None, 1)
                and values["BitsAllocated"] in (8, 16) and 1 <= values["BitsStored"] <= values["BitsAllocated"]
                and values["PixelRepresentation"] in (0, 1)):
            raise _Declined
        assert last is not None  # PixelRepresentation is there
        return ds, values, implicit, last.offset() + last.length()
    except _Declined:
        raise
    except Exception as e:  # dicomsdl's DicomException, or a value of an unexpected type
        raise _Declined from e


def _pixel_element(fd: int, ds: Any, offset: int, implicit: bool) -> tuple[int, int] | None:
    """(value offset, length) of the pixel data element of a little-endian file whose elements before the
    pixel data dicomsdl loaded (``ds``), one of which ends at ``offset``; None if the first element at or
    past the pixel data is not native pixel data (OB or OW, a defined length). Raises _Declined.

    dicomsdl cannot tell: asked for the pixel data element, it reads its whole value, and crashes on a
    truncated file. So pydicom's element reader parses the elements from ``offset`` on, skipping their
    values, in the bytes that follow (read again, more of them, when an element runs past them); it does
    not skip a sequence of undefined length, so dicomsdl, which loaded that sequence, says where it ends.
    """
    ahead = _AHEAD
    while True:
        head = os.pread(fd, ahead, offset)
        element = _first_past(head, implicit)
        if element is None:
            if len(head) < ahead:
                return None  # the file ends before its pixel data
            ahead *= 8  # an element runs past ``head``
            continue
        tag, vr, length, value = element
        if tag >= _BEFORE_PIXELS:
            native = tag == _PIXEL_DATA and length != _UNDEFINED and (implicit or vr in (b"OB", b"OW"))
            return (offset + value, length) if native else None
        try:  # a sequence of undefined length
            sequence = ds.getDataElement(tag)
            end = sequence.offset() + sequence.length()
        except Exception as e:
            raise _Declined from e
        if end <= offset:
            raise _Declined
        offset, ahead = end, _AHEAD


def _first_past(head: bytes, implicit: bool) -> tuple[int, bytes | None, int, int] | None:
    """(tag, VR, length, value offset) of the first element in ``head`` (little endian) at or past the pixel
    data, or of undefined length (a sequence), as pydicom's lean element reader parses them; None if ``head``
    ends first. Raises _Declined for an element of undefined length that is not a sequence.

    The lean reader (``pydicom.util.leanread``) rather than ``pydicom.filereader.data_element_generator``,
    measured with ``benchmarks/bench_crops.py``'s ``run_project`` and header reads, in one process, the readers
    alternating over 20 rounds (6 synthetic studies, 425 files, a loaded 2-core machine): against the
    hand-written walk this replaced, filereader's generator made read_header 20% and crop_study 7.5% slower,
    the lean reader read_header 6% and crop_study not measurably (time ratio 0.98).
    """
    try:
        for (group, elem), vr, length, _, value in lean_elements(io.BytesIO(head), implicit, True, defer_size=0):
            if group >= _BEFORE_PIXELS >> 16 or length == _UNDEFINED:
                return group << 16 | elem, vr, length, value
    except NotImplementedError as e:  # the lean reader's word for an undefined length it cannot skip
        raise _Declined from e
    except Exception:  # an element cut by the end of ``head``
        return None
    return None


def _numbers(raw: bytes, convert: Callable[[bytes], Any], multi: bool) -> Any:
    """A DS or IS value from its text, as pydicom reads it; None if empty. ValueError for bad text."""
    if not raw:
        return None
    parts = raw.split(b"\\")
    if len(parts) > 1 and not multi:
        raise _Declined  # pydicom gives a list where one number is expected
    return [convert(p) for p in parts] if multi else convert(parts[0])


def _native_layout(values: dict[str, Any], offset: int) -> NativeLayout:
    """The NativeLayout of a file whose values _dicomsdl_values accepted."""
    allocated = values["BitsAllocated"]
    slope, intercept = values["RescaleSlope"], values["RescaleIntercept"]
    return NativeLayout(
        offset=offset,
        dtype=("<i" if values["PixelRepresentation"] else "<u") + str(allocated // 8),
        bits_stored=values["BitsStored"],
        slope=1.0 if slope is None else slope,
        intercept=intercept or 0.0,
        monochrome1=values["PhotometricInterpretation"] == "MONOCHROME1",
    )


# --------------------------------------------------------------------------------------------------
# Headers through pydicom


def _pydicom_header(path: Path) -> SliceHeader:
    """read_header through pydicom: every encoding, and the precise error messages."""
    try:
        with path.open("rb") as f:
            ds = _dcmread(f, path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            _check_pixel_data(f, ds, path)
        return _build_header(path, ds.get)  # pydicom converts values here, on first access
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    except Exception as e:
        raise DataError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


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

    ``f`` must be positioned where dcmread stopped, at the pixel data element, which pydicom's element
    reader then parses, skipping its value. Native data: the declared length must fit in the file and
    cover Rows x Columns x frames. Encapsulated data: pydicom walks the fragment items to the sequence
    delimiter, which must be in the file, and the items must be well formed. Deflated files are not
    checked here (the file is not the dataset stream); decoding catches their faults.
    """
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, ""):
            raise DataError(f"{path}: missing tag {keyword}")
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and UID(ts).is_deflated:
        return
    pos = f.tell()
    implicit, little = ds.original_encoding
    try:
        element = next(data_element_generator(f, implicit, little, defer_size=0), None)
    except EOFError:  # pydicom found no sequence delimiter after the fragments
        raise DataError(f"{path}: truncated: compressed pixel data ends without its delimiter") from None
    except Exception as e:
        raise DataError(f"{path}: truncated or malformed pixel data element at byte {pos} ({e})") from None
    if element is None:
        raise DataError(f"{path}: no pixel data (file ends at byte {pos}; truncated?)")
    if element.tag not in _PIXEL_TAGS:
        return  # not positioned on pixel data: leave it to the decoder
    if element.length == _UNDEFINED:
        f.seek(element.value_tell)
        try:
            parse_fragments(f, endianness="<" if little else ">")
        except ValueError as e:
            raise DataError(f"{path}: malformed compressed pixel data ({e})") from None
        return
    _check_native_length(path, element.value_tell, element.length, os.fstat(f.fileno()).st_size)
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    _check_native_size(path, element.length, ds.Rows, ds.Columns, get_expected_length(ds, "bytes"))


def _check_native_length(path: Path, start: int, length: int, size: int) -> None:
    """Raise DataError if native pixel data of ``length`` bytes from ``start`` runs past the file's end."""
    if start + length > size:
        raise DataError(f"{path}: truncated: pixel data declares {length} bytes, file holds {size - start}")


def _check_native_size(path: Path, length: int, rows: int, cols: int, expected: int) -> None:
    """Raise DataError if native pixel data of ``length`` bytes is short of the image's ``expected`` bytes."""
    if length < expected:
        raise DataError(f"{path}: truncated: pixel data has {length} bytes, {rows}x{cols} image needs {expected}")


# --------------------------------------------------------------------------------------------------
# Header values and pixel values


def _build_header(path: Path, get: Callable[[str], Any], layout: NativeLayout | None = None) -> SliceHeader:
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
        slice_thickness=_optional_float(get("SliceThickness")),
        spacing_between_slices=_optional_float(get("SpacingBetweenSlices")),
        series_description=_optional_str(get("SeriesDescription")),
        photometric=str(get("PhotometricInterpretation")).strip().upper(),
        layout=layout,
    )


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
