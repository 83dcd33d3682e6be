"""The synthetic data has the competition's exact format and a coherent anatomy."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from lsdc import schema
from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry, pixel_to_patient
from lsdc.synthetic import (
    CLASS_MIX,
    CSF,
    FAT,
    MARKER,
    SyntheticConfig,
    draw_labels,
    generate,
    make_anatomy,
    paint_study,
)


def read_csv(d: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(d / name, keep_default_na=False, na_values=[""])


def header_geometry(path: Path) -> SliceGeometry:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return SliceGeometry(tuple(map(float, ds.ImagePositionPatient)), tuple(map(float, ds.ImageOrientationPatient)),
                         tuple(map(float, ds.PixelSpacing)), int(ds.Rows), int(ds.Columns))


def test_files_and_columns(synthetic_dir):
    d = synthetic_dir
    for name in (schema.TRAIN_CSV, schema.COORDS_CSV, schema.TRAIN_SERIES_CSV, schema.TEST_SERIES_CSV,
                 schema.SAMPLE_SUBMISSION_CSV, schema.TEST_SOLUTION_CSV, MARKER):
        assert (d / name).is_file(), name
    train = read_csv(d, schema.TRAIN_CSV)
    assert tuple(train.columns) == schema.TRAIN_COLUMNS
    assert len(train) == 8 and train.study_id.is_monotonic_increasing
    values = set(train[list(schema.LABEL_COLUMNS)].stack().dropna())
    assert values <= set(schema.SEVERITIES) and "Normal/Mild" in values
    coords = read_csv(d, schema.COORDS_CSV)
    assert tuple(coords.columns) == schema.COORD_COLUMNS
    assert coords.instance_number.dtype.kind == "i" and coords.x.dtype.kind == "f"
    assert set(coords.condition) == set(schema.CONDITIONS) and set(coords.level) == set(schema.LEVELS)
    for name in (schema.TRAIN_SERIES_CSV, schema.TEST_SERIES_CSV):
        sd = read_csv(d, name)
        assert tuple(sd.columns) == schema.SERIES_COLUMNS
        assert set(sd.series_description) <= set(schema.SERIES_DESCRIPTIONS)


def test_submission_and_solution(synthetic_dir):
    d = synthetic_dir
    sample = read_csv(d, schema.SAMPLE_SUBMISSION_CSV)
    test_ids = sorted(read_csv(d, schema.TEST_SERIES_CSV).study_id.unique())
    assert tuple(sample.columns) == schema.SUBMISSION_COLUMNS
    assert list(sample.row_id) == [r for s in test_ids for r in schema.study_row_ids(s)]
    np.testing.assert_allclose(sample[list(schema.SEVERITY_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)
    sol = read_csv(d, schema.TEST_SOLUTION_CSV)
    assert set(sol.row_id) <= set(sample.row_id)
    onehot = sol[list(schema.SEVERITY_COLUMNS)].to_numpy()
    assert ((onehot == 0) | (onehot == 1)).all() and (onehot.sum(1) == 1).all()
    np.testing.assert_array_equal(sol.sample_weight, np.array([1, 2, 4])[onehot.argmax(1)])


def test_series_folders_and_dicom_tags(synthetic_dir):
    d = synthetic_dir
    sd = read_csv(d, schema.TRAIN_SERIES_CSV)
    for split, frame in ((schema.TRAIN_IMAGES, sd), (schema.TEST_IMAGES, read_csv(d, schema.TEST_SERIES_CSV))):
        on_disk = {(int(p.parent.name), int(p.name)) for p in (d / split).glob("*/*")}
        assert on_disk == set(zip(frame.study_id, frame.series_id))
    row = sd.iloc[0]
    files = sorted((d / schema.TRAIN_IMAGES / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
    assert 15 <= len(files) <= 20 or row.series_description == schema.AXIAL_T2
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert int(ds.InstanceNumber) == int(files[0].stem)
    assert ds.SeriesDescription == row.series_description
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.pixel_array.dtype == np.uint16
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PixelSpacing",
                "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices"):
        assert tag in ds, tag
    assert ds.pixel_array.std() > 10  # an image, not a blank


def test_coordinates_inside_their_image_on_the_right_series(synthetic_dir):
    d = synthetic_dir
    coords = read_csv(d, schema.COORDS_CSV)
    train = read_csv(d, schema.TRAIN_CSV).set_index("study_id")
    desc = read_csv(d, schema.TRAIN_SERIES_CSV).set_index("series_id").series_description
    assert len(coords) > 0.9 * 8 * 25 * 0.95
    for r in coords.itertuples():
        assert desc[r.series_id] == schema.CONDITION_INFO[r.condition].series
        assert pd.notna(train.loc[r.study_id, schema.label_column(r.condition, r.level)])
        path = d / schema.TRAIN_IMAGES / str(r.study_id) / str(r.series_id) / f"{r.instance_number}.dcm"
        g = header_geometry(path)
        assert 0 <= r.x < g.cols and 0 <= r.y < g.rows


def _patient_points(d: Path, coords: pd.DataFrame) -> pd.DataFrame:
    pts = []
    for r in coords.itertuples():
        g = header_geometry(d / schema.TRAIN_IMAGES / str(r.study_id) / str(r.series_id) / f"{r.instance_number}.dcm")
        pts.append(pixel_to_patient(g, r.x, r.y))
    out = coords.copy()
    out[["px", "py", "pz"]] = np.array(pts)
    return out


def test_geometry_is_coherent(synthetic_dir):
    d = synthetic_dir
    p = _patient_points(d, read_csv(d, schema.COORDS_CSV))
    for study, s in p.groupby("study_id"):
        canal = s[s.condition == "Spinal Canal Stenosis"].set_index("level").reindex(schema.LEVELS)
        # Levels descend in patient z (head is +z); the five canal points share one instance.
        assert (np.diff(canal.pz.dropna().to_numpy()) < -15).all(), study
        assert canal.instance_number.dropna().nunique() == 1
        for group in ("foraminal", "subarticular"):
            left = s[s.condition == schema.condition_for(group, "left")].set_index("level")
            right = s[s.condition == schema.condition_for(group, "right")].set_index("level")
            both = left.index.intersection(right.index)
            # LPS: the patient's left is +x.
            assert (left.loc[both, "px"] > right.loc[both, "px"] + 8).all(), (study, group)
            if group == "foraminal":  # parasagittal slices on opposite sides
                assert (left.loc[both, "instance_number"] != right.loc[both, "instance_number"]).all()
            else:  # radiological convention on axial images: left has the larger pixel x
                assert (left.loc[both, "x"] > right.loc[both, "x"]).all()
        # The axial slice of a level lies within a few mm of that level's sagittal canal point.
        sub = s[s.condition == schema.condition_for("subarticular", "left")]
        for r in sub.itertuples():
            if r.level not in canal.index or pd.isna(canal.loc[r.level, "pz"]):
                continue
            path = d / schema.TRAIN_IMAGES / str(study) / str(r.series_id) / f"{r.instance_number}.dcm"
            g = header_geometry(path)
            c = canal.loc[r.level, ["px", "py", "pz"]].to_numpy(float)
            dist = abs(np.dot(c - np.asarray(g.ipp), g.normal))
            assert dist < 6.0, (study, r.level, dist)


def test_labels_are_drawn_where_they_belong():
    rng = np.random.default_rng(5)
    a = make_anatomy(rng)
    level = "L4/L5"
    li = schema.LEVELS.index(level)
    for cond in schema.CONDITIONS:
        a.severity[(cond, level)] = 0
    base = paint_study(a, 0.5)

    def count(vol, centre, radius, label):
        idx = np.round(vol.to_index(centre)).astype(int)
        r = int(radius / vol.vox)
        box = vol.labels[idx[0] - r: idx[0] + r + 1, idx[1] - r: idx[1] + r + 1, idx[2] - r: idx[2] + r + 1]
        return int((box == label).sum())

    checks = {
        "Spinal Canal Stenosis": [(lambda: a.canal_point(li), CSF, 7.0)],
        "Left Neural Foraminal Narrowing": [(lambda: a.foramen_point(li, "left"), FAT, 5.0),
                                            (lambda: a.foramen_point(li, "right"), FAT, 5.0)],
        "Right Subarticular Stenosis": [(lambda: a.recess_point(li, "right"), CSF, 3.5),
                                        (lambda: a.recess_point(li, "left"), CSF, 3.5)],
    }
    for cond, probes in checks.items():
        counts = []
        for sev in (0, 1, 2):
            a.severity[(cond, level)] = sev
            vol = paint_study(a, 0.5)
            counts.append([count(vol, f(), r, lab) for f, lab, r in probes])
        a.severity[(cond, level)] = 0
        target = [c[0] for c in counts]
        assert target[0] > target[1] > target[2], (cond, target)   # moderate subtle, severe plain
        assert target[2] < 0.5 * target[0], (cond, target)
        if len(probes) > 1:  # the other side is untouched
            other = [c[1] for c in counts]
            assert other[0] == other[1] == other[2], (cond, other)
    assert base.labels.shape == vol.labels.shape


def test_class_mix_near_the_real_one():
    rng = np.random.default_rng(0)
    draws = [draw_labels(rng) for _ in range(1500)]
    for group, mix in CLASS_MIX.items():
        conds = [c for c in schema.CONDITIONS if schema.CONDITION_INFO[c].group == group]
        sev = np.array([d[(c, lv)] for d in draws for c in conds for lv in schema.LEVELS])
        observed = np.bincount(sev, minlength=3) / len(sev)
        np.testing.assert_allclose(observed, mix, atol=0.035, err_msg=group)


def test_deterministic_and_refuses_foreign_folders(tmp_path):
    """Same seed, same bytes: in this process and in others with other string-hash seeds (a set of
    strings once decided the order of the random draws, so each new process rendered other pixels)."""
    cfg = SyntheticConfig(train_studies=1, test_studies=1, seed=9, workers=1)
    generate(tmp_path / "a", cfg, show_progress=False)
    generate(tmp_path / "b", cfg, show_progress=False)
    code = ("import sys; from lsdc.synthetic import SyntheticConfig as C, generate; "
            "generate(sys.argv[1], C(train_studies=1, test_studies=1, seed=9, workers=1), show_progress=False)")
    for hash_seed in ("1", "2", "3"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"h{hash_seed}")], check=True, timeout=120,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert sum(p.suffix == ".dcm" for p in files) > 50
    for other in ("b", "h1", "h2", "h3"):
        for rel in files:
            assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / other / rel, shallow=False), (other, rel)
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("study_id\n")
    with pytest.raises(DataError, match="refusing"):
        generate(real, cfg, show_progress=False)
    assert (real / "train.csv").read_text() == "study_id\n"
