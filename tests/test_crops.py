"""ROI crops: centred on their point, fixed size in mm, neighbours through patient space, resumable."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import (
    ERRORS_CSV,
    INDEX_CSV,
    SETTINGS_JSON,
    CropConfig,
    crop_roi,
    crop_study,
    intensity_window,
    load_crop,
    neighbour_indices,
    prepare,
    save_crop,
    training_requests,
)
from lsdc.dicom import load_series, write_slice
from lsdc.errors import ConfigError
from lsdc.experiment import ExperimentConfig
from lsdc.geometry import SliceGeometry, patient_to_pixel
from lsdc.stamps import stamp_path, tree_state

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _blob_series(tmp_path, point: np.ndarray):
    """Three axial slices of different sizes/spacings/offsets, each with a bright blob at ``point``."""
    specs = [((-60.0, -50.0, -4.0), 0.5, 240, 260), ((-70.0, -40.0, 0.0), 0.7, 200, 200),
             ((-55.0, -45.0, 4.0), 0.6, 220, 230)]
    for k, (ipp, ps, rows, cols) in enumerate(specs):
        g = SliceGeometry(ipp, AXIAL, (ps, ps), rows, cols)
        x, y, _ = patient_to_pixel(g, point)
        yy, xx = np.mgrid[0:rows, 0:cols]
        img = 100 + 3000 * np.exp(-(((xx - x) * ps) ** 2 + ((yy - y) * ps) ** 2) / (2 * 1.5 ** 2))
        write_slice(tmp_path / f"{k + 1}.dcm", img.astype(np.uint16), g, k + 1, schema.AXIAL_T2)
    return load_series(tmp_path, study_id=1, series_id=2)


def test_crop_is_centred_on_its_point_in_every_channel(tmp_path):
    point = np.array([3.3, 7.9, 0.0])
    series = _blob_series(tmp_path, point)
    i, x, y, _ = series.project(point)
    assert i == 1
    cfg = CropConfig(size=65, n_slices=3)
    crop = crop_roi(series, i, x, y, 30.0, cfg, intensity_window(series.images(range(3)), 1, 99.5))
    assert crop.shape == (65, 65, 3) and crop.dtype == np.uint8
    yy, xx = np.mgrid[0:65, 0:65]
    for c in range(3):
        w = np.clip(crop[..., c].astype(float) - np.median(crop[..., c]), 0, None)
        r, q = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
        assert abs(r - 32) < 0.5 and abs(q - 32) < 0.5, (c, r, q)


def test_crop_has_a_fixed_physical_size(tmp_path):
    point = np.array([0.0, 0.0, 0.0])
    series = _blob_series(tmp_path, point)
    i, x, y, _ = series.project(point)
    window = intensity_window(series.images(range(3)), 1, 99.5)
    small = crop_roi(series, i, x, y, 20.0, CropConfig(size=64, n_slices=1), window)[..., 0]
    large = crop_roi(series, i, x, y, 40.0, CropConfig(size=64, n_slices=1), window)[..., 0]
    # The blob (sigma 1.5 mm) covers twice as many pixels across in a crop half as wide in mm.
    width = lambda im: (im[32] > im[32].max() / 2).sum()  # noqa: E731
    assert width(small) == pytest.approx(2 * width(large), abs=2)


def test_neighbours_repeat_the_edge():
    assert neighbour_indices(0, 3, 10) == [0, 0, 1]
    assert neighbour_indices(9, 5, 10) == [7, 8, 9, 9, 9]
    assert neighbour_indices(4, 1, 10) == [4]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_png_roundtrip(tmp_path, n):
    crop = np.random.default_rng(n).integers(0, 256, (24, 24, n), dtype=np.uint8)
    save_crop(tmp_path / "c.png", crop)
    np.testing.assert_array_equal(load_crop(tmp_path / "c.png", n), crop)


def test_prepare_on_synthetic_data(synthetic_dir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    synthetic_dir = data
    cfg = CropConfig(size=48, n_slices=3, workers=1)
    crops_dir = prepare(synthetic_dir, tmp_path, cfg, show_progress=False)
    index = pd.read_csv(crops_dir / INDEX_CSV, keep_default_na=False)
    coords = pd.read_csv(synthetic_dir / schema.COORDS_CSV)
    assert len(index) == len(coords.drop_duplicates(["study_id", "condition", "level"]))
    assert set(index.label) <= set(schema.SEVERITIES)
    first = crops_dir / index.path.iloc[0]
    assert load_crop(first, 3).shape == (48, 48, 3)
    assert (crops_dir / "contact_sheet.png").is_file()
    # Spinal canal crops are centred in the CSF column: brighter centre than the crop on average (T2).
    spinal = index[index.condition == "Spinal Canal Stenosis"].head(8)
    centre = np.mean([load_crop(crops_dir / p, 3)[20:28, 20:28, 1].mean() for p in spinal.path])
    overall = np.mean([load_crop(crops_dir / p, 3)[..., 1].mean() for p in spinal.path])
    assert centre > overall
    # An interrupted run (no record of a finished index) resumes: valid crops are kept, a corrupt one is cut again.
    mtime = first.stat().st_mtime_ns
    stamp_path(crops_dir / INDEX_CSV).unlink()
    (crops_dir / index.path.iloc[1]).write_bytes(b"not a png")
    prepare(synthetic_dir, tmp_path, cfg, show_progress=False)
    assert first.stat().st_mtime_ns == mtime
    assert load_crop(crops_dir / index.path.iloc[1], 3).shape == (48, 48, 3)
    # A finished index is kept as long as its inputs are the same ...
    prepare(synthetic_dir, tmp_path, cfg, show_progress=False)
    assert first.stat().st_mtime_ns == mtime
    # ... and cut again when they change: a broken study is then reported and left out, not fatal.
    victim = index.study_id.iloc[-1]
    for f in (synthetic_dir / schema.TRAIN_IMAGES / str(victim)).rglob("*.dcm"):
        f.write_bytes(b"garbage")
    prepare(synthetic_dir, tmp_path, cfg, show_progress=False)
    again = pd.read_csv(crops_dir / INDEX_CSV, keep_default_na=False)
    assert first.stat().st_mtime_ns != mtime
    assert len(again) == len(index) - (index.study_id == victim).sum() and victim not in set(again.study_id)
    assert not (crops_dir / str(victim)).exists()
    assert any(str(victim) in r.getMessage() for r in caplog.records)
    # errors.csv names every cell the broken study lost; a missing study folder counts too.
    errors = pd.read_csv(crops_dir / ERRORS_CSV, keep_default_na=False)
    lost = errors[errors.study_id == victim]
    assert len(lost) == (index.study_id == victim).sum() and (lost.condition != "").all()
    gone = index.study_id.iloc[0]
    shutil.rmtree(synthetic_dir / schema.TRAIN_IMAGES / str(gone))
    prepare(synthetic_dir, tmp_path, cfg, show_progress=False)
    errors = pd.read_csv(crops_dir / ERRORS_CSV, keep_default_na=False)
    assert set(errors.study_id) == {victim, gone}
    assert (errors.study_id == gone).sum() == (index.study_id == gone).sum()


def test_changing_a_crop_setting_cuts_new_crops(synthetic_dir, tmp_path):
    """The crop folder is named from every pixel setting: another size in mm or another intensity window
    gets its own crops (never the old ones reused); the worker count changes nothing."""
    base = CropConfig(size=32, n_slices=1, workers=1)
    first = prepare(synthetic_dir, tmp_path, base, show_progress=False)
    spinal = pd.read_csv(first / INDEX_CSV, keep_default_na=False)
    rel = spinal[spinal.condition == schema.CONDITIONS[0]].path.iloc[0]
    old = load_crop(first / rel, 1)
    assert prepare(synthetic_dir, tmp_path, dataclasses.replace(base, workers=2), show_progress=False) == first
    for change in ({"size_mm": {**base.size_mm, "spinal": 24.0}}, {"low_pct": 5.0}):
        folder = prepare(synthetic_dir, tmp_path, dataclasses.replace(base, **change), show_progress=False)
        assert folder != first and folder.name.startswith("crops_32px_1sl_")
        assert not np.array_equal(load_crop(folder / rel, 1), old), change
        assert json.loads((folder / SETTINGS_JSON).read_text()) == dataclasses.replace(base, **change).pixel_settings()


def test_crop_sides_are_one_mapping_read_from_old_configs_too(tmp_path):
    """One group's side changes alone (the file or --set states only it); a config saved with the old
    per-group keys reads as the mapping and keeps its crop folder name; a missing or unknown group is an
    error naming the key."""
    cfg = config_mod.load(ExperimentConfig, None, ["crops.size_mm.foraminal=30"]).crops
    assert cfg.size_mm == {"spinal": 48.0, "foraminal": 30.0, "subarticular": 44.0}
    assert cfg.mm(schema.condition_for("foraminal", "left")) == 30.0
    old = tmp_path / "old.yaml"
    old.write_text("crops: {size: 32, spinal_mm: 24.0, foraminal_mm: 40.0, subarticular_mm: 44.0}\n")
    read = config_mod.load(ExperimentConfig, old).crops
    assert read.size_mm == {"spinal": 24.0, "foraminal": 40.0, "subarticular": 44.0}
    # The folder name the code before the mapping gave CropConfig(size=32, spinal_mm=24.0): crops kept.
    assert read.dirname == "crops_32px_3sl_ab6c409a"
    assert read.pixel_settings()["spinal_mm"] == 24.0
    with pytest.raises(ConfigError, match="crops.size_mm.*spinal, foraminal, subarticular"):
        CropConfig(size_mm={"spinal": 40.0}).check()
    with pytest.raises(ConfigError, match="crops.size_mm"):
        CropConfig(size_mm={"spinal": 40.0, "foraminal": 40.0, "subarticular": 40.0, "sacral": 1.0}).check()


def test_a_cells_crop_does_not_depend_on_the_other_cells_cut(synthetic_dir):
    """Training cuts the labelled cells (or, resuming, the missing ones); inference cuts every localised
    cell: the same cell must get the same crop either way, so the intensity window is the series' own."""
    requests = training_requests(synthetic_dir)
    study, reqs = next((s, r) for s, r in sorted(requests.items()) if len(r) >= 10)
    study_dir = synthetic_dir / schema.TRAIN_IMAGES / str(study)
    cfg = CropConfig(size=32, n_slices=3, workers=1)
    _, together = crop_study(study_dir, reqs, cfg, None)
    for r in reqs[::4]:
        _, alone = crop_study(study_dir, [r], cfg, None)
        np.testing.assert_array_equal(alone[(r.condition, r.level)], together[(r.condition, r.level)])


def test_an_unknown_instance_drops_only_its_own_crop(synthetic_dir, caplog):
    requests = training_requests(synthetic_dir)
    study, reqs = next((s, r) for s, r in sorted(requests.items()) if len(r) >= 10)
    axial = [r for r in reqs if schema.CONDITION_INFO[r.condition].group == "subarticular"]
    bad = dataclasses.replace(axial[0], instance_number=987654)
    cfg = CropConfig(size=32, n_slices=3, workers=1)
    failures = []
    _, crops = crop_study(synthetic_dir / schema.TRAIN_IMAGES / str(study), [bad, *axial[1:]], cfg, None,
                          failures=failures)
    assert set(crops) == {(r.condition, r.level) for r in axial[1:]}
    assert [(f["condition"], f["level"]) for f in failures] == [(bad.condition, bad.level)]
    assert "987654" in failures[0]["error"]
    assert any(str(study) in r.getMessage() and "987654" in r.getMessage() for r in caplog.records)


def test_an_image_folder_copied_or_mounted_again_is_the_same_input(tmp_path):
    """Kaggle mounts /kaggle/input anew each session (new modification times): crops and models made from
    it must be kept; a file added, removed or of another size is another input."""
    src = tmp_path / "a"
    (src / "1" / "2").mkdir(parents=True)
    for i in range(3):
        (src / "1" / "2" / f"{i}.dcm").write_bytes(bytes(100 + i))
    copy = tmp_path / "b" / "a"
    shutil.copytree(src, copy, copy_function=shutil.copyfile)   # new modification times
    os.utime(copy / "1" / "2" / "0.dcm", ns=(1, 1))
    assert tree_state(copy) == tree_state(src)
    (copy / "1" / "2" / "2.dcm").write_bytes(bytes(99))
    assert tree_state(copy) != tree_state(src)
    (copy / "1" / "2" / "2.dcm").write_bytes(bytes(102))
    (copy / "1" / "2" / "3.dcm").write_bytes(bytes(1))
    assert tree_state(copy) != tree_state(src)


def test_a_shrunk_patch_is_low_pass_filtered_not_aliased():
    """A 1-pixel checkerboard shrunk 4x: averaged to its mean grey (bilinear sampling alone would pick
    single pixels and keep the full contrast); a patch that is enlarged is sampled as before, and a point
    off the image still gives zeros."""
    from lsdc.crops import resample_patch

    board = (np.indices((400, 400)).sum(0) % 2 * 200).astype(np.float32)
    shrunk = resample_patch(board, 200.0, 200.0, 96 * 4 * 0.5, (0.5, 0.5), 96)   # 4 input pixels per output
    assert abs(float(shrunk.mean()) - 100) < 2 and float(shrunk.std()) < 10
    ramp = np.tile(np.arange(400, dtype=np.float32), (400, 1))
    enlarged = resample_patch(ramp, 200.0, 150.0, 32 * 0.25, (0.5, 0.5), 32)     # half an input pixel per output
    np.testing.assert_allclose(enlarged[0], 200 + (np.arange(32) - 15.5) * 0.5, atol=1e-3)
    assert not resample_patch(board, 900.0, 900.0, 200.0, (0.5, 0.5), 50).any()
