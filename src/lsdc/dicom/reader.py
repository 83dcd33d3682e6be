"""Reading one DICOM slice's header without its pixels: through dicomsdl where that is safe, else pydicom.

Headers of native little-endian greyscale files (the competition's) are read with dicomsdl, a C++
reader several times faster than pydicom, which also gives where the pixel data starts, so that
:func:`lsdc.dicom.pixels.read_slice` reads those pixels with one ``np.fromfile``. dicomsdl is only ever asked for the
elements before the pixel data (``load_until``): its full open and its decoders crash the process on
truncated and on some valid compressed files, and reading on to the pixel data element loads its whole value.
The pixel data element itself (where its value starts, its length, the fragments of compressed data) is
parsed by pydicom's element reader, on both paths: the package parses no DICOM element of its own. Every
other file, and every file the dicomsdl path finds anything unusual in, is read by pydicom, the reference,
which also words the error messages.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsdc.dicom.fast_header import dicomsdl_header
from lsdc.dicom.header import SliceHeader
from lsdc.dicom.pydicom_header import pydicom_header


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
    header = dicomsdl_header(path)
    return header if header is not None else pydicom_header(path)
