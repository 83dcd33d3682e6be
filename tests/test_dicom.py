"""Tests of lsdc.dicom: decoders against reference pixels, and series built from written files."""

from __future__ import annotations

import io
import logging
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
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

import lsdc.dicom as dicom
from lsdc.dicom import (
    Series,
    list_series,
    load_series,
    read_header,
    read_pixels,
    write_slice,
)
from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry, pixel_to_patient

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


def count_bytes_read(monkeypatch: pytest.MonkeyPatch) -> dict[Path, int]:
    """Count the bytes read from each file opened through Path.open in binary mode."""
    counted: dict[Path, int] = {}
    real_open = Path.open

    class Counting(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            counted[Path(self.name)] = counted.get(Path(self.name), 0) + len(data)
            return data

    def counting_open(self: Path, mode: str = "r", *args, **kwargs):
        return Counting(str(self), "rb") if mode == "rb" else real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    return counted


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


def test_header_read_does_not_load_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 512 x 512 slice (512 KiB): the header read takes its first kilobytes only, and no decoder."""
    path = write_slice(tmp_path / "1.dcm", ramp(512, 512), geom((0, 0, 0), rows=512, cols=512), 1)
    counted = count_bytes_read(monkeypatch)
    monkeypatch.setattr(dicom, "pixel_array", no_decoding)
    monkeypatch.setattr(pydicom, "dcmread", no_decoding)
    header = read_header(path)
    assert header.shape == (512, 512) and header.layout is not None
    assert 0 < counted[path] <= 16384 < path.stat().st_size


def test_pydicom_header_path_does_not_load_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Implicit VR files go through pydicom, which stops before the pixels."""
    write_sagittal_series(tmp_path / "1" / "2", [0.0, 4.0, 8.0], [1, 2, 3])
    for p in (tmp_path / "1" / "2").iterdir():
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(p, implicit_vr=True, little_endian=True)
    calls: list[dict] = []
    real_dcmread = pydicom.dcmread

    def spy(*args, **kwargs):
        ds = real_dcmread(*args, **kwargs)
        calls.append({**kwargs, "has_pixels": "PixelData" in ds})
        return ds

    monkeypatch.setattr(pydicom, "dcmread", spy)
    monkeypatch.setattr(dicom, "pixel_array", no_decoding)
    series = load_series(tmp_path / "1" / "2")
    assert len(series) == 3 and len(calls) == 3
    assert all(c["stop_before_pixels"] and not c["has_pixels"] for c in calls)
    assert all(s.layout is None for s in series.slices)


# --------------------------------------------------------------------------------------------------
# The fast header reader and native pixel path give exactly what pydicom gives


def assert_same_as_pydicom(path: Path, native_layout: bool = True) -> None:
    """read_header (fast path) equals the pydicom header; read_slice equals read_pixels bit for bit."""
    fast = dicom._fast_header(path)
    assert fast is not None, "the fast reader declined the file"
    assert fast == dicom._pydicom_header(path) == read_header(path)
    assert (fast.layout is not None) == native_layout
    out = dicom.read_slice(fast)
    reference = read_pixels(path)
    assert out.dtype == reference.dtype == np.float32
    np.testing.assert_array_equal(out, reference)


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
def test_fast_path_matches_pydicom_on_written_slices(tmp_path: Path, pixels: np.ndarray, kwargs: dict) -> None:
    rows, cols = pixels.shape
    path = write_slice(tmp_path / "5.dcm", pixels, geom((1.5, -2.25, 3.125), rows=rows, cols=cols), 5, **kwargs)
    assert_same_as_pydicom(path)


@pytest.mark.parametrize(("name", "native_layout"), [
    ("MR_small.dcm", True), ("CT_small.dcm", True), ("MR_small_padded.dcm", True),
    ("MR_small_RLE.dcm", False), ("MR_small_jp2klossless.dcm", False),
])
def test_fast_path_matches_pydicom_on_bundled_files(name: str, native_layout: bool) -> None:
    assert_same_as_pydicom(Path(bundled(name)), native_layout)


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_other_encodings_left_to_pydicom(name: str) -> None:
    assert dicom._fast_header(Path(bundled(name))) is None


def test_fast_path_skips_sequences_and_long_headers(tmp_path: Path) -> None:
    """An undefined-length sequence with nested items, and a 40 KB private element before the pixels
    (past the first read): both walked over, same header and pixels as pydicom."""
    path = write_slice(tmp_path / "9.dcm", ramp(12, 10), geom((0, 0, 0)), 9, "Sagittal T1")
    ds = pydicom.dcmread(path)
    inner = pydicom.Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    item.ReferencedImageSequence = [inner]
    item["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedImageSequence = [item, item]
    ds["ReferencedImageSequence"].is_undefined_length = True
    for it in (inner, item):
        it.is_undefined_length_sequence_item = True
    ds.add_new(0x00291010, "OB", b"\x01" * 40000)
    ds.save_as(path)
    raw = path.read_bytes()
    assert b"\xfe\xff\xdd\xe0" in raw  # pydicom wrote the sequence with undefined length
    assert_same_as_pydicom(path)


def test_truncated_file_rejected_by_both_paths(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "4.dcm", ramp(64, 64), geom((0, 0, 0), rows=64, cols=64), 4)
    header = read_header(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"4\.dcm.*truncated"):
        read_header(path)
    with pytest.raises(DataError, match=r"4\.dcm"):
        dicom.read_slice(header)  # the file shrank after its header was read: pydicom names it


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
    real = dicom.read_slice

    def counting(header):
        reads.append(header.path)
        return real(header)

    monkeypatch.setattr(dicom, "read_slice", counting)
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
