"""Writing single-frame MR slices shaped like the competition's files (synthetic data and tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from lsdc.geometry import SliceGeometry
from lsdc.io import atomic_path


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
    window: tuple[float, float] | None = None,
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
    WindowCenter / WindowWidth (``window``: (centre, width), single-valued as in the competition's files),
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
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (_ds_value(v) for v in window)
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


def _ds_value(v: float) -> str:
    """A valid DS string (at most 16 characters) for a float, as precise as DS allows."""
    return format_number_as_ds(float(v))
