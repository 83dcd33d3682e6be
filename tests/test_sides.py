"""One classifier for both sides (lsdc.sides, train.side_agnostic): the mirror on hand-made crops, the
geometry it rests on, and the same mirror in training batches and at prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lsdc import schema
from lsdc.data import load_coordinates
from lsdc.dicom import load_series
from lsdc.errors import ConfigError
from lsdc.experiment import COND_INDEX, ExperimentConfig, ExperimentModels, FoldModel
from lsdc.inference import classify
from lsdc.models import ModelConfig, create_model
from lsdc.sides import TO_LEFT, mirror_sides
from lsdc.train import CropBatches, predict_batches
from lsdc.train.config import TrainConfig


def _cond(group: str, side: str | None = None) -> int:
    return COND_INDEX[schema.condition_for(group, side) if side else schema.condition_for(group)]


def test_right_crops_are_mirrored_onto_the_left_with_their_labels():
    """Five 4x4x3 crops, one per condition: a right recess flipped left-right, a right foramen's slices
    reversed, both classified as the left condition; left sides and the canal untouched; input unchanged."""
    crops = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    cond = np.array([_cond("spinal"), _cond("foraminal", "left"), _cond("foraminal", "right"),
                     _cond("subarticular", "left"), _cond("subarticular", "right")])
    before = crops.copy()
    out, to = mirror_sides(crops, cond)
    np.testing.assert_array_equal(crops, before)
    assert to.tolist() == [_cond("spinal"), _cond("foraminal", "left"), _cond("foraminal", "left"),
                           _cond("subarticular", "left"), _cond("subarticular", "left")]
    np.testing.assert_array_equal(out[[0, 1, 3]], crops[[0, 1, 3]])
    np.testing.assert_array_equal(out[2][..., 0], crops[2][..., 2])          # slices reversed ...
    np.testing.assert_array_equal(out[2][..., 1], crops[2][..., 1])
    np.testing.assert_array_equal(out[2][:, :, 0], crops[2][:, :, 2])        # ... the image itself not flipped
    np.testing.assert_array_equal(out[4][:, 0], crops[4][:, 3])              # columns reversed
    np.testing.assert_array_equal(out[4][:, 3, 1], crops[4][:, 0, 1])
    mirrored_twice, _ = mirror_sides(out, cond)                               # the mirror is its own inverse
    np.testing.assert_array_equal(mirrored_twice, crops)
    assert all(schema.CONDITION_INFO[schema.CONDITIONS[i]].side in (None, "left") for i in TO_LEFT)


def test_sagittal_slices_run_from_the_patients_right_to_left_whatever_the_numbering(synthetic_dir):
    """What the foraminal mirror rests on: every sagittal series' slices are ordered towards the patient's
    left (+x), so the left foramen sits on a later slice than the right one in every study, even where the
    scanner numbered the instances the other way (generator version 3 numbers 64% from the right)."""
    coords = load_coordinates(synthetic_dir)
    series = pd.read_csv(synthetic_dir / schema.TRAIN_SERIES_CSV)
    t1 = series[series.series_description == schema.SAG_T1]
    checked, numbered_both_ways = 0, set()
    for r in t1.itertuples(index=False):
        s = load_series(synthetic_dir / schema.TRAIN_IMAGES / str(r.study_id) / str(r.series_id))
        assert s.normal[0] > 0.9, s.name
        numbered_both_ways.add(s.instance_numbers[0] < s.instance_numbers[-1])
        pts = coords[(coords.series_id == r.series_id) & coords.condition.str.contains("Foraminal")]
        for level, rows in pts.groupby("level"):
            sides = {schema.CONDITION_INFO[c].side: s.index_of_instance(int(i))
                     for c, i in zip(rows.condition, rows.instance_number, strict=True)}
            if len(sides) == 2:
                assert sides["left"] > sides["right"], (s.name, level)
                checked += 1
    assert checked >= 20 and numbered_both_ways == {True, False}


def test_lr_flip_and_side_agnostic_do_not_mix():
    with pytest.raises(ConfigError, match="train.lr_flip.*side_agnostic"):
        TrainConfig(side_agnostic=True, lr_flip=0.5).check()


def test_training_batches_and_prediction_mirror_alike():
    """Parity: a side-agnostic model's validation predictions (CropBatches with the mirror, predict_batches)
    equal what prediction gives the same crops (lsdc.inference.classify), for every condition; and they differ
    from the unmirrored predictions on the right-side crops only."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="resnet18", in_chans=3, num_classes=15)).eval()
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    conditions = [c for c in schema.CONDITIONS for _ in range(2)]
    table = pd.DataFrame({"study_id": np.arange(10), "source": "annotated", "row": np.arange(10),
                          "cond": [COND_INDEX[c] for c in conditions], "target": 0})
    mean, std = np.full(3, 0.5), np.full(3, 0.25)
    args = (model, 3, torch.device("cpu"), torch.tensor(mean).float(), torch.tensor(std).float())
    with torch.no_grad():
        mirrored = predict_batches(args[0], CropBatches(table, {"annotated": crops}, 4, False, mirror=True), *args[1:])
        plain = predict_batches(args[0], CropBatches(table, {"annotated": crops}, 4, False), *args[1:])
    cfg = ExperimentConfig()
    cfg.train.side_agnostic = True
    models = ExperimentModels("m", cfg, [FoldModel(0, model, mean, std)])
    levels = [schema.LEVELS[i % 2] for i in range(10)]
    got = classify(models, {(c, lv): crops[i] for i, (c, lv) in enumerate(zip(conditions, levels, strict=True))},
                   torch.device("cpu"), [], 4)[0]
    np.testing.assert_allclose(np.array([got[(c, lv)] for c, lv in zip(conditions, levels, strict=True)]),
                               mirrored, atol=1e-6)
    right = np.array([schema.CONDITION_INFO[c].side == "right" for c in conditions])
    np.testing.assert_allclose(mirrored[~right], plain[~right], atol=1e-6)
    assert not np.allclose(mirrored[right], plain[right], atol=1e-4)
