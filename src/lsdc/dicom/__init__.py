"""Reading DICOM slices and series, and writing slices: the only package in the project that touches pydicom.

Headers are read without pixel data so that a whole series can be listed, sorted and projected in
milliseconds; pixels are decoded only for the slices a caller asks for. Slices are ordered by their
position along the series' slice normal, never by file name or InstanceNumber (both are unreliable
in the competition data).

Pixel values come back as float32 (rows, cols) arrays in modality units (RescaleSlope and
RescaleIntercept applied), with bright always meaning high signal (MONOCHROME1 is inverted). No
VOI LUT or windowing is applied: intensity normalisation belongs to the caller.

``reader`` reads one file's header (``fast_header`` through dicomsdl where it is safe, ``pydicom_header``
otherwise, both building the ``header``), ``pixels`` its pixels, ``series``
builds sorted series from folders, ``writer`` writes slices for the synthetic data and the tests.
"""

from lsdc.dicom.header import NativeLayout, SliceHeader
from lsdc.dicom.pixels import pixels_from_dataset, read_pixels, read_slice
from lsdc.dicom.reader import read_header
from lsdc.dicom.series import Series, list_series, load_series
from lsdc.dicom.writer import write_slice

__all__ = [
    "NativeLayout",
    "Series",
    "SliceHeader",
    "list_series",
    "load_series",
    "pixels_from_dataset",
    "read_header",
    "read_pixels",
    "read_slice",
    "write_slice",
]
