"""The data check (scripts/check_data.py): counts on a synthetic folder, and faults planted in a copy of it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from lsdc import schema
from lsdc.datacheck import ERROR, HEADERS_PARQUET, OK, PRIOR, REPORT_MD, SKIP, Finding, check_data
from lsdc.dicom import load_series, write_slice

ROOT = Path(__file__).resolve().parents[1]


def _by_what(findings: list[Finding]) -> dict[str, Finding]:
    return {f.what: f for f in findings}


def _number(f: Finding) -> int:
    """The count of a finding written "n (share)"."""
    return int(str(f.count).split()[0])


def test_counts_on_a_clean_synthetic_folder(synthetic_dir, tmp_path):
    """Every file read, every count as the CSVs and folders say, nothing for the pipeline to skip."""
    f = _by_what(check_data(synthetic_dir, tmp_path, workers=1, show_progress=False))
    series = pd.read_csv(synthetic_dir / schema.TRAIN_SERIES_CSV)
    n_files = sum(1 for _ in synthetic_dir.glob("*_images/*/*/*.dcm"))
    assert f["DICOM files read"].count == n_files
    assert f["files the reader cannot use"].count == 0 and f["files the reader cannot use"].action == OK
    assert f["train: studies in the series CSV"].count == 8 and f["test: studies in the series CSV"].count == 3
    assert f[f"train: {schema.AXIAL_T2} series"].count == int((series.series_description == schema.AXIAL_T2).sum())
    assert f["train: series listed but without files"].count == 0
    assert f["coordinates whose instance has no readable file"].count == 0
    assert f[f"{schema.SAG_T1}: first instance number (median, max); share from 1"].count.endswith("100.0%")
    headers = pl.read_parquet(tmp_path / HEADERS_PARQUET)
    assert headers.height == n_files and headers["error"].null_count() == n_files
    one = headers.row(0, named=True)
    series_dir = synthetic_dir / f"{one['split']}_images" / str(one["study_id"]) / str(one["series_id"])
    s = load_series(series_dir)
    assert one["rows"] == s.slices[0].geometry.rows and one["instance_number"] in s.instance_numbers
    assert "| files | DICOM files read |" in (tmp_path / REPORT_MD).read_text()


def test_planted_faults_are_counted_with_what_the_pipeline_does(synthetic_dir, tmp_path):
    """A corrupt file, a listed series gone from disk (train and test), a study without Sagittal T1, an
    empty label cell, a coordinate row removed, slices written compressed and implicit-VR (real-format files the
    reader takes), and the coordinates file missing: each shows with its count and the pipeline's action."""
    before = _by_what(check_data(synthetic_dir, tmp_path / "clean", workers=1, show_progress=False))
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    series = pd.read_csv(data / schema.TRAIN_SERIES_CSV)
    test_series = pd.read_csv(data / schema.TEST_SERIES_CSV)
    first = series.iloc[0]
    files = sorted((data / schema.TRAIN_IMAGES / str(first.study_id) / str(first.series_id)).glob("*.dcm"))
    files[0].write_bytes(b"\x00not a dicom")
    gone = series[series.series_description == schema.AXIAL_T2].iloc[-1]
    shutil.rmtree(data / schema.TRAIN_IMAGES / str(gone.study_id) / str(gone.series_id))
    t = test_series.iloc[-1]
    shutil.rmtree(data / schema.TEST_IMAGES / str(t.study_id) / str(t.series_id))
    no_t1 = series.study_id.unique()[1]
    series[~((series.study_id == no_t1) & (series.series_description == schema.SAG_T1))].to_csv(
        data / schema.TRAIN_SERIES_CSV, index=False)
    labels = pd.read_csv(data / schema.TRAIN_CSV)
    labels.loc[0, "spinal_canal_stenosis_l1_l2"] = np.nan
    labels.to_csv(data / schema.TRAIN_CSV, index=False)
    coords = pd.read_csv(data / schema.COORDS_CSV)
    foraminal = coords.condition.str.contains("Foraminal") & (coords.study_id != no_t1)
    coords.drop(index=coords[foraminal].index[0]).to_csv(data / schema.COORDS_CSV, index=False)
    for path, syntax in ((files[1], RLELossless), (files[2], ImplicitVRLittleEndian)):
        s = load_series(path.parent)
        i = next(i for i, h in enumerate(s.slices) if h.path == path)
        h = s.slices[i]
        write_slice(path, s.image(i).astype(np.uint16), h.geometry, h.instance_number, first.series_description,
                    transfer_syntax=syntax)

    f = _by_what(check_data(data, tmp_path / "check", workers=1, show_progress=False))
    bad = f["files the reader cannot use"]
    assert bad.count == 1 and bad.action == SKIP and files[0].name in bad.consequence
    assert f["train: series listed but without files"].count == 1
    assert f["train: series listed but without files"].action == SKIP
    assert f["test: series listed but without files"].count == 1
    assert f["test: series listed but without files"].action == PRIOR
    assert f["train: series folders not in the CSV"].count >= 1     # the dropped Sagittal T1 is still on disk
    assert f[f"train: studies without {schema.SAG_T1}"].count == 1
    for what in ("empty spinal cells", "labelled foraminal cells without a coordinate"):
        assert _number(f[what]) == _number(before[what]) + 1 and f[what].action == SKIP, what
    assert f["coordinates whose instance has no readable file"].count >= 1   # the removed Axial T2 series' points

    (data / schema.COORDS_CSV).unlink()
    missing = _by_what(check_data(data, tmp_path / "check2", workers=1, show_progress=False))
    assert missing[f"{schema.COORDS_CSV} missing"].action == ERROR


def test_the_script_prints_the_table(synthetic_dir, tmp_path):
    """scripts/check_data.py as a user runs it: the table on stdout, the files in <output-dir>/data_check."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_data.py"), "--data-dir", str(synthetic_dir),
                          "--output-dir", str(tmp_path), "--workers", "1"], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert "| labels | empty subarticular cells |" in run.stdout
    assert (tmp_path / "data_check" / HEADERS_PARQUET).is_file()
