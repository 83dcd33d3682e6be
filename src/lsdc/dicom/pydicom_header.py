"""Headers through pydicom: every encoding, and the precise error messages; the pixel data element is
checked complete without loading its value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lsdc.dicom.header import (
    PIXEL_DATA,
    UNDEFINED_LENGTH,
    SliceHeader,
    build_header,
    check_native_length,
    check_native_size,
)
from lsdc.errors import DataError

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
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, PIXEL_DATA}  # float, double float and integer pixel data


def pydicom_header(path: Path) -> SliceHeader:
    """read_header through pydicom: every encoding, and the precise error messages."""
    try:
        with path.open("rb") as f:
            ds = dcmread(f, path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            _check_pixel_data(f, ds, path)
        return build_header(path, ds.get)  # pydicom converts values here, on first access
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    except Exception as e:
        raise DataError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def dcmread(f: BinaryIO, path: Path, **kwargs: Any) -> Dataset:
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
    if element.length == UNDEFINED_LENGTH:
        f.seek(element.value_tell)
        try:
            parse_fragments(f, endianness="<" if little else ">")
        except ValueError as e:
            raise DataError(f"{path}: malformed compressed pixel data ({e})") from None
        return
    check_native_length(path, element.value_tell, element.length, os.fstat(f.fileno()).st_size)
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    check_native_size(path, element.length, ds.Rows, ds.Columns, get_expected_length(ds, "bytes"))
