"""Tests of lsdc.dicom: decoders against reference pixels, the dicomsdl header path against pydicom, and
series built from written files."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

import lsdc
import lsdc.dicom.fast_header as fast_header
import lsdc.dicom.pixels as pixels_mod
import lsdc.dicom.pydicom_header as pydicom_header
import lsdc.dicom.series as series_module
from lsdc.dicom import (
    Series,
    SliceHeader,
    list_series,
    load_series,
    pixels_from_dataset,
    read_header,
    read_pixels,
    read_slice,
    write_slice,
)
from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry, pixel_to_patient
from lsdc.synthetic import SyntheticConfig, generate

SAG_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
AX_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
LUMA = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------------
# Helpers


def geom(ipp, iop=SAG_IOP, spacing=(0.5, 0.6), rows=12, cols=10) -> SliceGeometry:
    return SliceGeometry(tuple(float(v) for v in ipp), tuple(float(v) for v in iop),
                         (float(spacing[0]), float(spacing[1])), rows, cols)


def ramp(rows: int, cols: int, offset: int = 0) -> np.ndarray:
    """A uint16 image whose every pixel differs, shifted by ``offset`` to tell slices apart."""
    return (np.arange(rows * cols).reshape(rows, cols) + offset).astype(np.uint16)


def bundled(name: str) -> str:
    """Path of a test file bundled with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom version")
    return str(path)


def native(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels of a natively encoded test file straight from its bytes (no pydicom decoder)."""
    ds = pydicom.dcmread(bundled(name))
    n = int(np.prod(shape))
    return np.frombuffer(ds.PixelData, dtype=dtype)[:n].reshape(shape).astype(np.float64)


def no_decoding(*args, **kwargs):
    raise AssertionError("pydicom used or pixels decoded during a header read")


def bytes_read_by_process() -> int:
    """Bytes this process has read through read() system calls so far (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def transfer_syntax(name: str) -> str:
    return pydicom.dcmread(bundled(name), stop_before_pixels=True).file_meta.TransferSyntaxUID


def write_sagittal_series(folder: Path, xs: list[float], instances: list[int], shapes=None) -> None:
    """One slice per (x, instance), file named '{instance}.dcm'; pixels offset by instance*1000."""
    shapes = shapes or [(12, 10)] * len(xs)
    for x, n, (rows, cols) in zip(xs, instances, shapes, strict=True):
        write_slice(folder / f"{n}.dcm", ramp(rows, cols, n * 1000 % 50000),
                    geom((x, -50.0, 80.0), rows=rows, cols=cols), n, "Sagittal T1",
                    study_uid="1.2.3", series_uid="1.2.3.4", slice_thickness=4.0)


# --------------------------------------------------------------------------------------------------
# Decoders on pydicom's bundled files


MR_LOSSLESS = [
    ("MR_small.dcm", ExplicitVRLittleEndian),
    ("MR_small_implicit.dcm", ImplicitVRLittleEndian),
    ("MR_small_bigendian.dcm", ExplicitVRBigEndian),
    ("MR_small_expb.dcm", ExplicitVRBigEndian),
    ("MR_small_padded.dcm", ExplicitVRLittleEndian),
    ("MR_small_RLE.dcm", RLELossless),
    ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
    ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
]


@pytest.mark.parametrize(("name", "syntax"), MR_LOSSLESS)
def test_lossless_mr_encodings_equal_raw_pixels(name: str, syntax: str) -> None:
    """Every encoding of MR_small decodes to exactly the little-endian bytes of the original."""
    assert transfer_syntax(name) == syntax
    reference = native("MR_small.dcm", "<i2", (64, 64))
    out = read_pixels(bundled(name))
    assert out.dtype == np.float32 and out.shape == (64, 64)
    np.testing.assert_array_equal(out, reference)
    header = read_header(bundled(name))
    assert header.geometry.rows == 64 and header.photometric == "MONOCHROME2"


def test_rescale_applied_on_ct_small() -> None:
    """CT_small: RescaleSlope 1, RescaleIntercept -1024 -> Hounsfield units."""
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    raw = native("CT_small.dcm", "<i2", (128, 128))
    np.testing.assert_array_equal(read_pixels(bundled("CT_small.dcm")), raw - 1024)


def test_jpeg_baseline_matches_dcmtk_decompression() -> None:
    """SC_rgb_jpeg (JPEG baseline) against SC_rgb_jpeg_dcmd, its dcmdjpeg-decompressed twin."""
    assert transfer_syntax("SC_rgb_jpeg.dcm") == JPEGBaseline8Bit
    reference = native("SC_rgb_jpeg_dcmd.dcm", "u1", (256, 256, 3)) @ LUMA
    out = read_pixels(bundled("SC_rgb_jpeg.dcm"))
    assert out.shape == (256, 256)
    diff = np.abs(out - reference)
    assert diff.mean() < 0.05 and diff.max() <= 1.0


@pytest.mark.parametrize(("name", "syntax", "max_error"), [
    ("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, 0.0),       # JPEG lossless, process 14 SV1
    ("SC_rgb_gdcm_KY.dcm", JPEG2000, 0.0),                # JPEG 2000 (lossy syntax, lossless data)
    ("SC_rgb_rle_16bit.dcm", RLELossless, 0.0),           # 16-bit RLE (values x 257)
    ("SC_rgb_jls_lossy_line.dcm", JPEGLSNearLossless, 2.0),  # JPEG-LS near-lossless, NEAR = 2
])
def test_colour_encodings_match_rle_reference(name: str, syntax: str, max_error: float) -> None:
    """Colour files of one 100x100 image, compared (as grey) with its RLE lossless version."""
    assert transfer_syntax(name) == syntax
    reference = read_pixels(bundled("SC_rgb_rle.dcm"))
    out = read_pixels(bundled(name))
    if "16bit" in name:
        out = out / 257
    assert np.abs(out - reference).max() <= max_error + 1e-3


def test_jpeg_extended_12bit_matches_jpeg2000_version() -> None:
    """JPGExtended (12-bit JPEG process 4) and JPEG2000.dcm are lossy copies of one image."""
    assert transfer_syntax("JPGExtended.dcm") == JPEGExtended12Bit
    a = read_pixels(bundled("JPGExtended.dcm"))
    b = read_pixels(bundled("JPEG2000.dcm"))
    assert a.shape == b.shape == (1024, 256)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_deflated_matches_inflated_bytes() -> None:
    """image_dfl.dcm: pixels equal the last Rows*Columns bytes of the zlib-inflated dataset."""
    path = bundled("image_dfl.dcm")
    assert transfer_syntax("image_dfl.dcm") == DeflatedExplicitVRLittleEndian
    meta = pydicom.filereader.read_file_meta_info(path)
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    inflated = zlib.decompress(Path(path).read_bytes()[start:], -15)
    reference = np.frombuffer(inflated[-512 * 512:], dtype=np.uint8).reshape(512, 512)
    np.testing.assert_array_equal(read_pixels(path), reference)


def test_monochrome1_inverted_on_real_file(tmp_path: Path) -> None:
    """MR_small relabelled MONOCHROME1: v -> lo + hi - v over the signed 16-bit range."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    raw = native("MR_small.dcm", "<i2", (64, 64))
    np.testing.assert_array_equal(read_pixels(tmp_path / "mono1.dcm"), (-32768 + 32767) - raw)


def test_multiframe_takes_first_frame(caplog: pytest.LogCaptureFixture) -> None:
    """rtdose (15 frames, native and RLE): frame 0, with a warning naming the file."""
    reference = native("rtdose.dcm", "<u4", (15, 10, 10))[0]
    for name in ("rtdose.dcm", "rtdose_rle.dcm"):
        with caplog.at_level(logging.WARNING, logger="lsdc.dicom"):
            np.testing.assert_array_equal(read_pixels(bundled(name)), reference)
        assert name in caplog.text and "first" in caplog.text


def test_truncated_bundled_file_rejected_by_header_and_decoder() -> None:
    path = bundled("MR_truncated.dcm")
    with pytest.raises(DataError, match="MR_truncated.dcm.*truncated"):
        read_header(path)
    with pytest.raises(DataError, match="MR_truncated.dcm"):
        read_pixels(path)


def test_undecodable_pixels_raise_data_error(tmp_path: Path) -> None:
    """A JPEG baseline file whose codestream is garbage: header fine, decoding names the file."""
    path = write_slice(tmp_path / "1.dcm", ramp(12, 10), geom((0, 0, 0)), 1)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.save_as(path)
    assert read_header(path).instance_number == 1
    with pytest.raises(DataError, match=r"1\.dcm.*JPEG Baseline"):
        read_pixels(path)


# --------------------------------------------------------------------------------------------------
# write_slice round trips


@pytest.mark.parametrize("syntax", [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
    JPEG2000Lossless,
])
def test_write_slice_lossless_round_trip(tmp_path: Path, syntax: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 4096, size=(40, 37)).astype(np.uint16)
    g = geom((1.5, -2.25, 3.125), rows=40, cols=37)
    path = write_slice(tmp_path / "7.dcm", pixels, g, 7, "Axial T2", transfer_syntax=syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_pixels(path), pixels)
    h = read_header(path)
    assert h.geometry == g and h.series_description == "Axial T2" and h.instance_number == 7


def test_write_slice_jpeg2000_lossy_is_close(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:64, :64]
    pixels = (1000 + 800 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.uint16)
    path = write_slice(tmp_path / "1.dcm", pixels, geom((0, 0, 0), rows=64, cols=64), 1,
                       transfer_syntax=JPEG2000, j2k_cr=[10])
    out = read_pixels(path)
    assert not np.array_equal(out, pixels)  # really lossy
    assert np.abs(out - pixels).mean() < 0.02 * pixels.mean()


def test_write_slice_signed_pixels(tmp_path: Path) -> None:
    pixels = np.array([[-5, 0], [7, -32768]], dtype=np.int16)
    path = write_slice(tmp_path / "1.dcm", pixels, geom((0, 0, 0), rows=2, cols=2), 1)
    np.testing.assert_array_equal(read_pixels(path), pixels)


def test_file_without_preamble_or_meta(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "3.dcm", ramp(12, 10), geom((0, 0, 0)), 3)
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    ds.save_as(tmp_path / "bare.dcm", enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert b"DICM" not in (tmp_path / "bare.dcm").read_bytes()[:200]
    assert read_header(tmp_path / "bare.dcm").instance_number == 3
    np.testing.assert_array_equal(read_pixels(tmp_path / "bare.dcm"), ramp(12, 10))


# --------------------------------------------------------------------------------------------------
# Values: rescale and MONOCHROME1 on written slices


@pytest.mark.parametrize(("slope", "intercept", "expected"), [
    (2.5, -100.0, lambda v: 2.5 * v - 100),
    (2.0, None, lambda v: 2.0 * v),
    (None, 7.0, lambda v: v + 7),
    (None, None, lambda v: v),
])
def test_rescale_values(tmp_path: Path, slope, intercept, expected) -> None:
    pixels = ramp(12, 10, 3)
    path = write_slice(tmp_path / "1.dcm", pixels, geom((0, 0, 0)), 1,
                       rescale_slope=slope, rescale_intercept=intercept)
    np.testing.assert_allclose(read_pixels(path), expected(pixels.astype(np.float64)), rtol=0, atol=1e-4)


def test_monochrome1_inverted(tmp_path: Path) -> None:
    """12-bit MONOCHROME1: raw 0 (displayed white) becomes the brightest value 4095."""
    pixels = np.array([[0, 1000], [4000, 4095]], dtype=np.uint16)
    g = geom((0, 0, 0), rows=2, cols=2)
    plain = write_slice(tmp_path / "1.dcm", pixels, g, 1, photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(read_pixels(plain), 4095 - pixels.astype(np.float64))
    # With rescale 2v + 10 the range is [10, 8200]: v -> 8210 - (2v + 10).
    scaled = write_slice(tmp_path / "2.dcm", pixels, g, 2, photometric="MONOCHROME1", bits_stored=12,
                         rescale_slope=2, rescale_intercept=10)
    np.testing.assert_array_equal(read_pixels(scaled), 8200 - 2 * pixels.astype(np.float64))
    assert read_header(plain).photometric == "MONOCHROME1"


# --------------------------------------------------------------------------------------------------
# Headers


@pytest.mark.parametrize("tag", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_tag_names_file_and_tag(tmp_path: Path, tag: str) -> None:
    path = write_slice(tmp_path / "12.dcm", ramp(12, 10), geom((0, 0, 0)), 12)
    ds = pydicom.dcmread(path)
    delattr(ds, tag)
    ds.save_as(path)
    with pytest.raises(DataError, match=rf"12\.dcm.*{tag}"):
        read_header(path)


def test_optional_tags_and_instance_fallback(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "42.dcm", ramp(12, 10), geom((0, 0, 0)), 5, slice_thickness=3.5,
                       spacing_between_slices=4.0)
    h = read_header(path)
    assert (h.instance_number, h.slice_thickness, h.spacing_between_slices) == (5, 3.5, 4.0)
    ds = pydicom.dcmread(path)
    del ds.InstanceNumber, ds.SliceThickness, ds.SpacingBetweenSlices
    ds.save_as(path)
    h = read_header(path)
    assert (h.instance_number, h.slice_thickness, h.spacing_between_slices) == (42, None, None)
    assert h.series_description is None and h.shape == (12, 10)


def test_header_read_does_not_read_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2048 x 2048 slice of random pixels (8 MiB): the header read (dicomsdl, then a kilobyte from the last
    element it read, for the pixel data element's header) reads a few kilobytes of it, and calls neither
    pydicom.dcmread nor a decoder nor np.fromfile."""
    if not Path("/proc/self/io").exists():
        pytest.skip("needs Linux /proc/self/io to count the bytes read")
    pixels = np.random.default_rng(0).integers(0, 65536, size=(2048, 2048)).astype(np.uint16)
    path = write_slice(tmp_path / "1.dcm", pixels, geom((0, 0, 0), rows=2048, cols=2048), 1)
    read_header(write_slice(tmp_path / "2.dcm", ramp(12, 10), geom((0, 0, 0)), 2))  # warm-up
    monkeypatch.setattr(pydicom, "dcmread", no_decoding)
    monkeypatch.setattr(pixels_mod, "pixel_array", no_decoding)
    monkeypatch.setattr(np, "fromfile", no_decoding)
    before = bytes_read_by_process()
    header = read_header(path)
    read = bytes_read_by_process() - before
    assert header.shape == (2048, 2048) and header.layout is not None
    assert 0 < read <= 64 * 1024 < path.stat().st_size


def test_pydicom_header_path_does_not_load_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compressed files go through pydicom, which stops before the pixels."""
    folder = tmp_path / "1" / "2"
    for n, x in [(1, 0.0), (2, 4.0), (3, 8.0)]:
        write_slice(folder / f"{n}.dcm", ramp(12, 10), geom((x, 0, 0)), n, transfer_syntax=RLELossless)
    calls: list[dict] = []
    real_dcmread = pydicom.dcmread

    def spy(*args, **kwargs):
        ds = real_dcmread(*args, **kwargs)
        calls.append({**kwargs, "has_pixels": "PixelData" in ds})
        return ds

    monkeypatch.setattr(pydicom, "dcmread", spy)
    monkeypatch.setattr(pixels_mod, "pixel_array", no_decoding)
    series = load_series(folder)
    assert len(series) == 3 and len(calls) == 3
    assert all(c["stop_before_pixels"] and not c["has_pixels"] for c in calls)
    assert all(s.layout is None for s in series.slices)


# --------------------------------------------------------------------------------------------------
# The dicomsdl header path and native pixel reads give exactly what pydicom gives


def assert_same_as_pydicom(path: Path) -> SliceHeader:
    """The dicomsdl path reads the file, equal to the pydicom header and to read_header; read_slice equals
    read_pixels bit for bit."""
    fast = fast_header.dicomsdl_header(path)
    assert fast is not None, "the dicomsdl path declined the file"
    assert fast.layout is not None
    assert fast == pydicom_header.pydicom_header(path) == read_header(path)
    assert_same_pixels(fast)
    return fast


def assert_same_pixels(header: SliceHeader) -> None:
    out, reference = read_slice(header), read_pixels(header.path)
    assert out.dtype == reference.dtype == np.float32 and out.shape == reference.shape
    assert out.tobytes() == reference.tobytes()  # bit for bit


def header_or_error(read, path: Path) -> SliceHeader | type[DataError]:
    try:
        return read(path)
    except DataError:
        return DataError


def same(a: object, b: object) -> bool:
    """Equal, or with equal reprs (a NaN SliceThickness is not equal to itself; repr shows floats exactly)."""
    return a == b or repr(a) == repr(b)


def sweep(paths: list[Path]) -> tuple[int, list[str]]:
    """read_header against the pydicom-only header on every file: (files read by the dicomsdl path,
    differences). Either both raise DataError or the headers are equal; with a layout, read_slice
    equals read_pixels bit for bit."""
    fast, differences = 0, []
    for path in paths:
        got, expected = header_or_error(read_header, path), header_or_error(pydicom_header.pydicom_header, path)
        if not same(got, expected):
            differences.append(f"{path.name}: read_header {got!r}, pydicom {expected!r}")
            continue
        if isinstance(got, SliceHeader) and got.layout is not None:
            fast += 1
            try:
                assert_same_pixels(got)
            except (AssertionError, DataError) as e:
                differences.append(f"{path.name}: pixels differ ({e})")
    return fast, differences


@pytest.mark.parametrize(("pixels", "kwargs"), [
    (ramp(12, 10, 3), {}),
    (ramp(12, 10, 3), {"slice_thickness": 3.5, "spacing_between_slices": 4.0, "series_description": "T2"}),
    (np.array([[-5, 0, 7], [-32768, 32767, 1]], dtype=np.int16), {}),
    (np.array([[0, 4095, 4096], [65535, 100, 8191]], dtype=np.uint16), {"bits_stored": 12}),
    (np.array([[0, 2047, -2048], [-1, 100, 4000]], dtype=np.int16), {"bits_stored": 12}),
    (np.array([[0, 1000], [4000, 4095]], dtype=np.uint16), {"bits_stored": 12, "photometric": "MONOCHROME1"}),
    (np.array([[0, 1000], [4000, 4095]], dtype=np.uint16),
     {"bits_stored": 12, "photometric": "MONOCHROME1", "rescale_slope": 2, "rescale_intercept": 10}),
    (ramp(12, 10, 3), {"rescale_slope": 2.5, "rescale_intercept": -100.0}),
    (ramp(12, 10, 3), {"rescale_intercept": 7.0}),
])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_dicomsdl_path_matches_pydicom_on_written_slices(tmp_path: Path, pixels: np.ndarray, kwargs: dict,
                                                         syntax: str) -> None:
    rows, cols = pixels.shape
    path = write_slice(tmp_path / "5.dcm", pixels, geom((1.5, -2.25, 3.125), rows=rows, cols=cols), 5,
                       transfer_syntax=syntax, **kwargs)
    assert_same_as_pydicom(path)


def test_dicomsdl_path_skips_sequences_and_long_headers(tmp_path: Path) -> None:
    """An undefined-length sequence with nested items, and a 40 KB private element before the pixels; then
    an undefined-length sequence as the last element (dicomsdl gives the length it found): same header and
    pixels as pydicom."""
    path = write_slice(tmp_path / "9.dcm", ramp(12, 10), geom((0, 0, 0)), 9, "Sagittal T1")
    with_element(path, 0x00081140, "SQ", b"", undefined_sequence=True)
    with_element(path, 0x00291010, "OB", b"\x01" * 40000)
    assert b"\xfe\xff\xdd\xe0" in path.read_bytes()  # pydicom wrote the sequence with undefined length
    assert assert_same_as_pydicom(path).series_description == "Sagittal T1"
    with_element(path, 0x00400275, "SQ", b"", undefined_sequence=True)
    assert b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" in path.read_bytes()  # (0040,0275), undefined length
    assert_same_as_pydicom(path)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_dicomsdl_path_finds_pixels_past_its_first_read(tmp_path: Path, syntax: str) -> None:
    """A private element after the last value read, long enough that the pixel data element's header lies
    across, or just past, the end of the first bytes read after it (fast_header.AHEAD): same header and pixels."""
    for length in range(fast_header.AHEAD - 26, fast_header.AHEAD + 2, 2):
        path = write_slice(tmp_path / f"{length}.dcm", ramp(12, 10), geom((0, 0, 0)), 9, transfer_syntax=syntax)
        assert_same_as_pydicom(with_element(path, 0x00291010, "OB", b"\x01" * length))


def test_pixel_element_read_as_pydicom_reads_it() -> None:
    """SC_rgb_jpeg.dcm (explicit VR) has its pixel data element encoded with implicit VR: the header check
    reads it as pydicom does (compressed data, well formed), so the error is the missing geometry, not a
    truncation; the pixels decode."""
    path = bundled("SC_rgb_jpeg.dcm")
    with pytest.raises(DataError, match="ImagePositionPatient"):
        read_header(path)
    assert read_pixels(path).shape == (256, 256)


def test_malformed_fragments_rejected_by_header(tmp_path: Path) -> None:
    """RLE data whose last fragment item has a wrong tag: read_header names the file."""
    path = write_slice(tmp_path / "7.dcm", ramp(12, 10), geom((0, 0, 0)), 7, transfer_syntax=RLELossless)
    data = path.read_bytes()
    i = data.rindex(b"\xfe\xff\x00\xe0")  # the last item tag
    path.write_bytes(data[:i] + b"\xfe\xff\x0d\xe0" + data[i + 4:])
    with pytest.raises(DataError, match=r"7\.dcm.*malformed compressed pixel data"):
        read_header(path)


def test_sweep_every_bundled_pydicom_file() -> None:
    """Every file bundled with pydicom (176 files of many encodings, some broken on purpose)."""
    paths = [Path(f) for f in get_testdata_files() if os.path.isfile(f)]
    assert len(paths) > 150
    fast, differences = sweep(paths)
    assert differences == []
    assert fast >= 30  # native little-endian greyscale files: MR_small, CT_small, ...


def with_element(path: Path, tag: int, vr: str, value: bytes | str, *, undefined_sequence: bool = False) -> Path:
    """Add an element to a written slice (an undefined-length sequence of one item when asked)."""
    ds = pydicom.dcmread(path)
    if undefined_sequence:
        inner = pydicom.Dataset()
        inner.ReferencedSOPInstanceUID = "1.2.3.4"
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        item.ReferencedImageSequence = [inner]
        item["ReferencedImageSequence"].is_undefined_length = True
        for it in (inner, item):
            it.is_undefined_length_sequence_item = True
        ds.add_new(tag, "SQ", [item, item])
        ds[tag].is_undefined_length = True
    else:
        ds.add_new(tag, vr, value)
    ds.save_as(path)
    return path


def eight_bit(path: Path) -> Path:
    """Rewrite a written slice as 8-bit (BitsAllocated 8), keeping the low byte of each pixel."""
    ds = pydicom.dcmread(path)
    raw = np.frombuffer(ds.PixelData, dtype="<u2")[: ds.Rows * ds.Columns]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (raw & 0xFF).astype(np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def synthetic_variants(folder: Path) -> dict[str, tuple[Path, bool]]:
    """Files written with write_slice across its variants: {name: (path, read by the dicomsdl path)}."""
    folder.mkdir(parents=True, exist_ok=True)
    signed = np.array([[-5, 0, 7], [-32768, 32767, 1]], dtype=np.int16)
    wide = np.array([[0, 4095, 4096], [65535, 100, 8191]], dtype=np.uint16)  # bits above BitsStored 12
    signed12 = np.array([[0, 2047, -2048], [-1, 100, 4000]], dtype=np.int16)
    mono1 = np.array([[0, 1000], [4000, 4095]], dtype=np.uint16)
    variants: dict[str, tuple[np.ndarray, dict]] = {
        "plain": (ramp(12, 10, 3), {}),
        "described": (ramp(12, 10, 3), {"series_description": "Sagittal T2/STIR", "slice_thickness": 3.5,
                                        "spacing_between_slices": 4.0}),
        "thickness": (ramp(12, 10, 3), {"slice_thickness": 3.0}),
        "signed": (signed, {}),
        "bits12": (wide, {"bits_stored": 12}),
        "signed_bits12": (signed12, {"bits_stored": 12}),
        "mono1": (mono1, {"bits_stored": 12, "photometric": "MONOCHROME1"}),
        "mono1_rescaled": (mono1, {"bits_stored": 12, "photometric": "MONOCHROME1", "rescale_slope": 2,
                                   "rescale_intercept": 10}),
        "mono1_negative_slope": (signed, {"photometric": "MONOCHROME1", "rescale_slope": -0.5}),
        "rescaled": (ramp(12, 10, 3), {"rescale_slope": 2.5, "rescale_intercept": -100.0}),
        "intercept": (ramp(12, 10, 3), {"rescale_intercept": 7.0}),
        "slope": (ramp(12, 10, 3), {"rescale_slope": 0.1}),
        "odd_shape": (ramp(7, 5, 1), {}),
    }
    out: dict[str, tuple[Path, bool]] = {}
    for name, (pixels, kwargs) in variants.items():
        rows, cols = pixels.shape
        g = geom((1.5, -2.25, 3.125), rows=rows, cols=cols)
        for syntax, suffix in ((ExplicitVRLittleEndian, ""), (ImplicitVRLittleEndian, "_implicit")):
            path = write_slice(folder / f"{name}{suffix}.dcm", pixels, g, 5, transfer_syntax=syntax, **kwargs)
            out[name + suffix] = (path, True)
    for syntax, suffix in ((ExplicitVRLittleEndian, ""), (ImplicitVRLittleEndian, "_implicit")):
        for name, rows, cols in (("8bit", 12, 10), ("8bit_odd", 7, 5)):  # 35 bytes of pixels, padded to 36
            path = write_slice(folder / f"{name}{suffix}.dcm", ramp(rows, cols, 1), geom((0, 0, 0), rows=rows,
                               cols=cols), 6, transfer_syntax=syntax)
            out[name + suffix] = (eight_bit(path), True)
    # A long private element, and undefined-length sequences, before the pixels.
    long_private = write_slice(folder / "long_private.dcm", ramp(12, 10), geom((0, 0, 0)), 9, "Sagittal T1")
    out["long_private"] = (with_element(long_private, 0x00291010, "OB", b"\x01" * 40000), True)
    many = write_slice(folder / "many_private.dcm", ramp(12, 10), geom((0, 0, 0)), 9)  # parsed one by one
    for i in range(40):
        with_element(many, 0x00291000 + i, "LO", f"private {i}")
    out["many_private"] = (many, True)
    sequence = write_slice(folder / "sequence.dcm", ramp(12, 10), geom((0, 0, 0)), 9)
    out["sequence"] = (with_element(sequence, 0x00081140, "SQ", b"", undefined_sequence=True), True)
    sequence_last = write_slice(folder / "sequence_last.dcm", ramp(12, 10), geom((0, 0, 0)), 9)
    out["sequence_last"] = (with_element(sequence_last, 0x00400275, "SQ", b"", undefined_sequence=True), True)
    padded = write_slice(folder / "trailing_padding.dcm", ramp(12, 10), geom((0, 0, 0)), 9)
    out["trailing_padding"] = (with_element(padded, 0xFFFCFFFC, "OB", b"\0" * 64), True)
    # Encodings left to pydicom, and broken files.
    for syntax, name in ((RLELossless, "rle"), (JPEG2000Lossless, "j2k"), (DeflatedExplicitVRLittleEndian, "dfl")):
        path = write_slice(folder / f"{name}.dcm", ramp(40, 37), geom((0, 0, 0), rows=40, cols=37), 3,
                           transfer_syntax=syntax)
        out[name] = (path, False)
    whole = write_slice(folder / "whole.dcm", ramp(64, 64), geom((0, 0, 0), rows=64, cols=64), 4).read_bytes()
    for name, data in (("cut_pixels", whole[:-100]), ("cut_header", whole[:400]), ("cut_pixel_header", whole[:-8198]),
                       ("empty", b""), ("garbage", np.random.default_rng(1).bytes(3000))):
        (folder / f"{name}.dcm").write_bytes(data)
        out[name] = (folder / f"{name}.dcm", False)
    return out


def test_sweep_synthetic_variants(tmp_path: Path) -> None:
    variants = synthetic_variants(tmp_path)
    for name, (path, fast) in variants.items():
        assert isinstance(header_or_error(fast_header.dicomsdl_header, path), SliceHeader) == fast, name
    fast, differences = sweep([path for path, _ in variants.values()])
    assert differences == []
    assert fast == sum(f for _, f in variants.values()) >= 30


@pytest.fixture(scope="module")
def generated_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, SyntheticConfig(train_studies=2, test_studies=0, seed=1, workers=1), show_progress=False)
    return out


def test_sweep_generated_studies(generated_studies: Path) -> None:
    """Every file of the synthetic generator's studies takes the dicomsdl path and matches pydicom."""
    paths = sorted(generated_studies.glob("train_images/*/*/*.dcm"))
    assert len(paths) > 50
    fast, differences = sweep(paths)
    assert differences == []
    assert fast == len(paths)


def test_headers_without_dicomsdl_come_from_pydicom(generated_studies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dicomsdl is optional (a Kaggle notebook may lack it): without it every header comes from pydicom,
    with the same values, and the pixels from pydicom's decoder, with the same values."""
    paths = sorted(generated_studies.glob("train_images/*/*/*.dcm"))[:10]
    fast = [read_header(p) for p in paths]
    monkeypatch.setattr(fast_header, "dicomsdl", None)
    slow = [read_header(p) for p in paths]
    assert slow == fast and all(h.layout is None for h in slow) and all(h.layout is not None for h in fast)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(read_slice(a), read_slice(b))


@pytest.mark.parametrize(("name", "fast"), [
    ("MR_small.dcm", True), ("MR_small_implicit.dcm", True), ("CT_small.dcm", True), ("MR_small_padded.dcm", True),
    ("MR_small_bigendian.dcm", False), ("image_dfl.dcm", False), ("MR_small_RLE.dcm", False),
    ("MR_small_jp2klossless.dcm", False), ("rtdose.dcm", False), ("SC_rgb_small_odd.dcm", False),
])
def test_dicomsdl_path_on_bundled_files(name: str, fast: bool) -> None:
    """Native little-endian single-frame greyscale files take the dicomsdl path; the others pydicom's."""
    path = Path(bundled(name))
    if fast:
        assert_same_as_pydicom(path)
    else:
        assert fast_header.dicomsdl_header(path) is None
        assert header_or_error(read_header, path) == header_or_error(pydicom_header.pydicom_header, path)


def replace_text(path: Path, tag: int, vr: str, value: bytes) -> None:
    """Replace the value of an explicit VR element with a 16-bit length, bytes as given (even invalid)."""
    data = path.read_bytes()
    key = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    i = data.index(key)
    length = struct.unpack_from("<H", data, i + 6)[0]
    path.write_bytes(data[:i] + key + struct.pack("<H", len(value)) + value + data[i + 8 + length:])


@pytest.mark.parametrize(("tag", "vr", "value"), [
    (0x00180050, "DS", b""), (0x00180050, "DS", b"abc "), (0x00180050, "DS", b"3abc"), (0x00180050, "DS", b"0x10"),
    (0x00180050, "DS", b"1_000 "), (0x00180050, "DS", b" 3.5"), (0x00180050, "DS", b"3\\3 "),
    (0x00180050, "DS", b"+.5 "), (0x00180050, "DS", b"1e3 "), (0x00180050, "DS", b"nan "),
    (0x00200013, "IS", b""), (0x00200013, "IS", b"5.0 "), (0x00200013, "IS", b"ab"), (0x00200013, "IS", b"+7"),
    (0x00200013, "IS", b"5\\6 "),
    (0x00280030, "DS", b"0.5 "), (0x00280030, "DS", b"0.5\\"), (0x00280030, "DS", b"0.5\\abc "),
    (0x00280030, "DS", b"0.5\\0.5\\0.5 "), (0x00200032, "DS", b"1\\2\\inf "),
    (0x00280004, "CS", b"monochrome2 "), (0x00280004, "CS", b"MONOCHROME2\\X "),
    (0x0008103E, "LO", b"a\\b "), (0x0008103E, "LO", b"Sagittal \xe9"),
    (0x00280010, "US", b"\x0c"), (0x00280010, "US", b"\x0c\x00\x0c\x00"), (0x00280103, "US", b""),
])
def test_odd_values_read_as_pydicom_reads_them(tmp_path: Path, tag: int, vr: str, value: bytes) -> None:
    """dicomsdl converts '' to 0, '3abc' to 3, drops a trailing empty value...: for values like these the
    result is pydicom's, whether the dicomsdl path reads the file or leaves it to pydicom."""
    path = write_slice(tmp_path / "5.dcm", ramp(12, 10), geom((0, 0, 0)), 5, "T1", slice_thickness=4.0)
    replace_text(path, tag, vr, value)
    assert sweep([path])[1] == []


@pytest.mark.parametrize(("charset", "encoding", "fast"), [
    ("ISO_IR 100", "latin-1", True), ("ISO_IR 192", "utf-8", True), (None, "latin-1", False),
    ("ISO_IR 6", "latin-1", False), ("ISO 2022 IR 100", "latin-1", False), ("ISO_IR 144", "iso8859-5", False),
])
def test_non_ascii_series_description(tmp_path: Path, charset: str | None, encoding: str, fast: bool) -> None:
    """Read as pydicom reads it by dicomsdl (Latin-1, UTF-8), or left to pydicom (no or another charset)."""
    text = "Sagittal T2 é" if encoding != "iso8859-5" else "Сагиттальный T2"
    path = write_slice(tmp_path / "5.dcm", ramp(12, 10), geom((0, 0, 0)), 5, "PLACEHOLDER")
    if charset is not None:
        with_element(path, 0x00080005, "CS", charset)
    replace_text(path, 0x0008103E, "LO", text.encode(encoding) + b" " * (len(text.encode(encoding)) % 2))
    header = read_header(path)
    assert header == pydicom_header.pydicom_header(path) and header.series_description == text
    assert (fast_header.dicomsdl_header(path) is not None) == fast


def test_truncated_pixels_rejected_in_a_separate_process(tmp_path: Path) -> None:
    """dicomsdl's full open kills the process on a file cut inside its pixels: the header read must not.

    Run in a child process so that a crash fails this test instead of ending the test session.
    """
    path = write_slice(tmp_path / "4.dcm", ramp(64, 64), geom((0, 0, 0), rows=64, cols=64), 4)
    path.write_bytes(path.read_bytes()[:-100])
    (tmp_path / "empty.dcm").write_bytes(b"")
    code = ("import sys\nfrom lsdc.dicom import read_header\nfrom lsdc.errors import DataError\n"
            "for p in sys.argv[1:]:\n    try:\n        read_header(p)\n    except DataError as e:\n"
            "        print(e)\n")
    src = str(Path(lsdc.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    files = [str(path), bundled("MR_truncated.dcm"), str(tmp_path / "empty.dcm")]
    done = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert "4.dcm" in lines[0] and "truncated" in lines[0]
    assert "MR_truncated.dcm" in lines[1] and "truncated" in lines[1]
    assert "empty.dcm" in lines[2]


def test_truncated_file_rejected_by_both_paths(tmp_path: Path) -> None:
    """Same message from the dicomsdl path as from pydicom; a file that shrank after its header was read is
    decoded by pydicom, which names it."""
    path = write_slice(tmp_path / "4.dcm", ramp(64, 64), geom((0, 0, 0), rows=64, cols=64), 4)
    header = read_header(path)
    assert header.layout is not None
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"4\.dcm.*truncated") as fast:
        fast_header.dicomsdl_header(path)
    with pytest.raises(DataError) as slow:
        pydicom_header.pydicom_header(path)
    assert str(fast.value) == str(slow.value)
    with pytest.raises(DataError, match=r"4\.dcm.*truncated"):
        read_header(path)
    with pytest.raises(DataError, match=r"4\.dcm"):
        read_slice(header)


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "SC_rgb_jpeg.dcm", "MR_small_RLE.dcm"])
def test_pixels_from_dataset_matches_read_pixels(name: str) -> None:
    ds = pydicom.dcmread(bundled(name))
    assert pixels_from_dataset(ds).tobytes() == read_pixels(bundled(name)).tobytes()


# --------------------------------------------------------------------------------------------------
# Series


def test_series_sorted_by_position_not_name_or_instance(tmp_path: Path) -> None:
    folder = tmp_path / "4003253" / "702807833"
    xs = {15: 8.0, 16: -12.0, 200: 4.0, 5046: -4.0, 7: 0.0, 1000: -8.0}
    write_sagittal_series(folder, list(xs.values()), list(xs))
    series = load_series(folder)
    assert (series.study_id, series.series_id, series.description) == (4003253, 702807833, "Sagittal T1")
    expected = sorted(xs, key=xs.get)
    assert series.instance_numbers == expected == [16, 1000, 5046, 7, 200, 15]
    np.testing.assert_allclose(series.positions, sorted(xs.values()))
    np.testing.assert_allclose(series.normal, [1, 0, 0])
    assert series.orientation == "sagittal" and series.is_sagittal and not series.is_axial
    assert series.slice_spacing == pytest.approx(4.0)
    assert series.skipped == []
    for i, n in enumerate(expected):
        assert series.index_of_instance(n) == i
        assert series.image(i)[0, 0] == n * 1000 % 50000  # the right file's pixels
    with pytest.raises(DataError, match=r"4003253/702807833.*instance number 3\b"):
        series.index_of_instance(3)


def test_series_sort_ignores_orientation_sign(tmp_path: Path) -> None:
    """A sagittal series with flipped IOP still runs from the patient's right (low x) to left."""
    for n, x in [(1, 6.0), (2, -6.0), (3, 0.0)]:
        write_slice(tmp_path / f"{n}.dcm", ramp(12, 10), geom((x, 0, 0), iop=(0, -1, 0, 0, 0, -1)), n)
    series = load_series(tmp_path)
    assert series.instance_numbers == [2, 3, 1]
    np.testing.assert_allclose(series.positions, [-6, 0, 6])


def _tilted_axial_iop(degrees: float) -> tuple[float, ...]:
    t = np.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(-np.sin(t)))


def test_oblique_axial_blocks_sorted_and_projected(tmp_path: Path) -> None:
    """Two oblique blocks of one axial series: sorted feet to head, and every pixel projects back.

    The field of view (160 x 120 mm) and tilts (+-20 degrees) are large enough that sorting by the
    top-left corner (ImagePositionPatient) along a common normal would interleave the blocks.
    """
    written = {}
    spacing = (10.0, 10.0)
    rows, cols = 12, 16
    n = 1
    for block, (tilt, z0) in enumerate([(20.0, 16.0), (-20.0, 0.0)]):
        iop = _tilted_axial_iop(tilt)
        row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
        normal = np.cross(row_dir, col_dir)
        for k in range(4):
            centre = np.array([0.0, 10.0, z0]) + 4.0 * k * normal
            ipp = centre - (cols - 1) / 2 * spacing[1] * row_dir - (rows - 1) / 2 * spacing[0] * col_dir
            name = 100 - n if block == 0 else n  # names interleave the blocks
            write_slice(tmp_path / f"{name}.dcm", ramp(rows, cols, name),
                        geom(ipp, iop=iop, spacing=spacing, rows=rows, cols=cols), name)
            written[name] = centre[2]
            n += 1
    series = load_series(tmp_path)
    assert series.orientation == "axial" and series.is_axial
    assert series.instance_numbers == sorted(written, key=written.get)
    assert np.all(np.diff(series.positions) > 0)
    for k, g in enumerate(series.geometries()):
        for x, y in [(0.0, 0.0), (3.25, 7.5), (15.0, 11.0)]:
            index, px, py, dist = series.project(pixel_to_patient(g, x, y))
            assert index == k
            assert abs(px - x) < 1e-6 and abs(py - y) < 1e-6 and dist < 1e-6
        off = series.pixel_to_patient(k, (cols - 1) / 2, (rows - 1) / 2) + 1.5 * g.normal
        assert series.project(off)[0] == k and series.project(off)[3] == pytest.approx(1.5)


def test_varying_shapes_keep_per_slice_geometry(tmp_path: Path) -> None:
    shapes = [(12, 10), (20, 16), (8, 30)]
    write_sagittal_series(tmp_path, [0.0, 4.0, 8.0], [1, 2, 3], shapes=shapes)
    series = load_series(tmp_path)
    assert [(g.rows, g.cols) for g in series.geometries()] == shapes
    assert [im.shape for im in series.images(range(3))] == shapes
    assert [s.shape for s in series.slices] == shapes


def test_bad_files_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_sagittal_series(tmp_path, [0.0, 4.0, 8.0], [1, 2, 3])
    good = (tmp_path / "1.dcm").read_bytes()
    (tmp_path / "4.dcm").write_bytes(np.random.default_rng(1).bytes(3000))  # garbage
    (tmp_path / "5.dcm").write_bytes(good[:-50])                             # cut in the pixels
    (tmp_path / "6.dcm").write_bytes(good[:400])                             # cut in the header
    (tmp_path / "notes.txt").write_text("not a DICOM file\n")
    rle = write_slice(tmp_path / "7.dcm", ramp(12, 10), geom((12, 0, 0)), 7, transfer_syntax=RLELossless)
    rle.write_bytes(rle.read_bytes()[:-30])                                  # compressed, cut
    no_ipp = write_slice(tmp_path / "8.dcm", ramp(12, 10), geom((16, 0, 0)), 8)
    ds = pydicom.dcmread(no_ipp)
    del ds.ImagePositionPatient
    ds.save_as(no_ipp)
    (tmp_path / ".hidden").write_bytes(b"ignored")

    with caplog.at_level(logging.WARNING, logger="lsdc.dicom"):
        series = load_series(tmp_path, study_id=1, series_id=2, description="Sagittal T1")
    assert series.instance_numbers == [1, 2, 3]
    bad = ["4.dcm", "5.dcm", "6.dcm", "7.dcm", "8.dcm", "notes.txt"]
    assert sorted(p.name for p, _ in series.skipped) == bad
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in bad:
        assert any(name in w for w in warnings), name
    reasons = {p.name: reason for p, reason in series.skipped}
    assert "truncated" in reasons["5.dcm"] and "truncated" in reasons["7.dcm"]
    assert "ImagePositionPatient" in reasons["8.dcm"]
    assert ".hidden" not in caplog.text


def test_load_series_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing_dir"):
        load_series(tmp_path / "missing_dir")
    empty = tmp_path / "junk"
    empty.mkdir()
    (empty / "1.dcm").write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.*no readable"):
        load_series(empty)
    with pytest.raises(DataError, match="no slices"):
        Series(study_id=1, series_id=2, slices=[])


def test_images_read_lazily_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sagittal_series(tmp_path, [0.0, 4.0, 8.0, 12.0], [1, 2, 3, 4])
    reads: list[Path] = []
    real = series_module.read_slice

    def counting(header):
        reads.append(header.path)
        return real(header)

    monkeypatch.setattr(series_module, "read_slice", counting)
    series = load_series(tmp_path)
    assert reads == []
    first = series.image(2)
    assert [p.name for p in reads] == ["3.dcm"]
    assert series.image(2) is first and len(reads) == 1
    assert not first.flags.writeable
    series.images([0, 2, -1])
    assert [p.name for p in reads] == ["3.dcm", "1.dcm", "4.dcm"]
    series.clear_cache()
    series.image(2)
    assert len(reads) == 4


def test_list_series(tmp_path: Path) -> None:
    for name in ["30", "4", "notes"]:
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a folder")
    assert list_series(tmp_path) == {4: tmp_path / "4", 30: tmp_path / "30"}
    with pytest.raises(DataError, match="nope"):
        list_series(tmp_path / "nope")
