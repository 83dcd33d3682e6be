"""Headers through dicomsdl: native little-endian greyscale files, with where their pixels start.

dicomsdl is only ever asked for the elements before the pixel data (``load_until``): its full open and its
decoders crash the process on truncated and on some valid compressed files, and reading on to the pixel
data element loads its whole value. The pixel data element itself is parsed by pydicom's lean element
reader. Anything unusual sends the file to :mod:`lsdc.dicom.pydicom_header`, the reference.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.util.leanread import data_element_generator as lean_elements

from lsdc.dicom.header import (
    PIXEL_DATA,
    UNDEFINED_LENGTH,
    NativeLayout,
    SliceHeader,
    build_header,
    check_native_length,
    check_native_size,
)
from lsdc.errors import DataError

try:  # optional: without it (a Kaggle notebook that lacks the wheel) pydicom reads every header, slower
    import dicomsdl
except ImportError:
    dicomsdl = None

if dicomsdl is not None:
    # dicomsdl logs every fault to stderr before raising it; here a fault only sends the file to pydicom.
    dicomsdl.set_loglevel(dicomsdl.LogLevel.DISABLE)

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
AHEAD = 1024  # bytes first read after dicomsdl's elements: a few short elements, then the pixel data's header


class _Declined(Exception):
    """The dicomsdl path does not read this file: pydicom does."""


def dicomsdl_header(path: Path) -> SliceHeader | None:
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
        header = build_header(path, values.get, _native_layout(values, start))
    except DataError:
        return None  # pydicom words it
    rows, cols = header.shape
    check_native_length(path, start, length, size)
    check_native_size(path, length, rows, cols, rows * cols * values["BitsAllocated"] // 8)
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
    ahead = AHEAD
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
            native = tag == PIXEL_DATA and length != UNDEFINED_LENGTH and (implicit or vr in (b"OB", b"OW"))
            return (offset + value, length) if native else None
        try:  # a sequence of undefined length
            sequence = ds.getDataElement(tag)
            end = sequence.offset() + sequence.length()
        except Exception as e:
            raise _Declined from e
        if end <= offset:
            raise _Declined
        offset, ahead = end, AHEAD


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
            if group >= _BEFORE_PIXELS >> 16 or length == UNDEFINED_LENGTH:
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
