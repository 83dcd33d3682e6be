"""Test-time views (lsdc.tta) through lsdc.inference.classify, the one function prediction and the localised
OOF share: a hand-made model that answers differently for each orientation and each condition shows which
crop each view shows it and which condition it is asked."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from lsdc import config, schema
from lsdc.errors import ConfigError
from lsdc.experiment import COND_INDEX, ExperimentConfig, ExperimentModels, FoldModel, to_input
from lsdc.inference import PredictConfig, classify
from lsdc.pipeline import PipelineConfig
from lsdc.tta import LRFLIP, VFLIP, VIEWS, stamp_value, view_names

CPU = torch.device("cpu")
MEAN, STD = np.zeros(3), np.ones(3)
LEFT, RIGHT = schema.condition_for("subarticular", "left"), schema.condition_for("subarticular", "right")
SAGITTAL = (schema.condition_for("spinal"), schema.condition_for("foraminal", "left"),
            schema.condition_for("foraminal", "right"))


class Oriented(nn.Module):
    """Logits of every condition from where the crop is bright (top against bottom, left against right) through
    weights of its own per condition: any flip, or another condition asked, changes the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = 3 * torch.randn(len(schema.CONDITIONS), 3, 3, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // 2, x.shape[3] // 2
        f = torch.stack([x[:, :, :h].mean((1, 2, 3)) - x[:, :, h:].mean((1, 2, 3)),
                         x[..., :w].mean((1, 2, 3)) - x[..., w:].mean((1, 2, 3)), torch.full((len(x),), 0.2)], 1)
        return torch.einsum("kcf,nf->nkc", self.w, f).reshape(len(x), -1)


def oriented_crop(seed: int) -> np.ndarray:
    """An 8 x 8 x 3 crop of noise with one bright quadrant: plainly oriented both ways."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 100, (8, 8, 3))
    r, c = rng.integers(0, 2, 2) * 4
    out[r:r + 4, c:c + 4] += 150
    return out.astype(np.uint8)


MODEL = Oriented().eval()
CELLS = [(c, lv) for c in schema.CONDITIONS for lv in schema.LEVELS[:2]]
CROPS = {cell: oriented_crop(i) for i, cell in enumerate(CELLS)}


def experiment(side_agnostic: bool = False) -> ExperimentModels:
    cfg = ExperimentConfig()
    cfg.train.side_agnostic = side_agnostic
    return ExperimentModels("oriented", cfg, [FoldModel(0, MODEL, MEAN, STD)])


def own(crop: np.ndarray, condition: str, dims: tuple[int, ...] = ()) -> np.ndarray:
    """The model's softmax for ``condition`` on ``crop``, flipped along ``dims`` of (N, C, H, W) first."""
    x = to_input(crop[None], MEAN, STD)
    with torch.no_grad():
        logits = MODEL(torch.flip(x, dims=list(dims)) if dims else x)
    return torch.softmax(logits.view(len(schema.CONDITIONS), 3)[COND_INDEX[condition]], 0).numpy()


def run(views: list[str], side_agnostic: bool = False) -> dict[tuple[str, str], np.ndarray]:
    return classify(experiment(side_agnostic), CROPS, CPU, views, 3)[0]   # batches of 3: the views cut across


def test_identity_only_is_the_models_own_softmax():
    got = run([])
    for (c, lv), crop in CROPS.items():
        np.testing.assert_allclose(got[(c, lv)], own(crop, c), atol=1e-6)
        assert not np.allclose(own(crop, c), own(crop, c, (2,)), atol=1e-3)   # the model sees orientation


def test_vflip_averages_the_model_on_the_upside_down_batch():
    got = run(["vflip"])
    for (c, lv), crop in CROPS.items():
        np.testing.assert_allclose(got[(c, lv)], (own(crop, c) + own(crop, c, (2,))) / 2, atol=1e-6)


def test_lrflip_reads_a_flipped_recess_as_the_other_side_and_leaves_sagittal_crops_alone():
    """A left recess: its left answer on the crop and the right answer on the crop flipped left-right, put back
    on the left recess (and the other way round); spinal and foraminal crops as they are, not flipped."""
    got = run(["lrflip"])
    for (c, lv), crop in CROPS.items():
        if c in (LEFT, RIGHT):
            other = RIGHT if c == LEFT else LEFT
            np.testing.assert_allclose(got[(c, lv)], (own(crop, c) + own(crop, other, (3,))) / 2, atol=1e-6)
            assert not np.allclose(got[(c, lv)], (own(crop, c) + own(crop, c, (3,))) / 2, atol=1e-3)
        else:
            np.testing.assert_allclose(got[(c, lv)], own(crop, c), atol=1e-6)
            assert not np.allclose(own(crop, c), own(crop, c, (3,)), atol=1e-3)


def test_views_combine_per_crop_over_those_that_apply():
    got = run(["vflip", "lrflip"])
    for (c, lv), crop in CROPS.items():
        seen = [own(crop, c), own(crop, c, (2,))]
        if c in (LEFT, RIGHT):
            seen.append(own(crop, RIGHT if c == LEFT else LEFT, (3,)))
        np.testing.assert_allclose(got[(c, lv)], np.mean(seen, 0), atol=1e-6)


def test_lrflip_leaves_a_side_agnostic_model_as_it_is():
    """Its recesses are all mirrored onto the left and its right-recess head never trained: lrflip is skipped."""
    plain, flipped = run([], side_agnostic=True), run(["lrflip"], side_agnostic=True)
    for k in CROPS:
        np.testing.assert_allclose(flipped[k], plain[k], atol=1e-7)


def test_the_registry_says_which_crops_and_conditions_each_view_takes():
    assert list(VIEWS) == ["vflip", "lrflip"]
    cond = np.array([COND_INDEX[c] for c in schema.CONDITIONS])
    assert VFLIP.applies(cond, False).all() and VFLIP.applies(cond, True).all()
    assert (VFLIP.asks[cond] == cond).all()
    recess = np.array([c in (LEFT, RIGHT) for c in schema.CONDITIONS])
    assert (LRFLIP.applies(cond, False) == recess).all() and not LRFLIP.applies(cond, True).any()
    assert LRFLIP.asks[COND_INDEX[LEFT]] == COND_INDEX[RIGHT] and LRFLIP.asks[COND_INDEX[RIGHT]] == COND_INDEX[LEFT]
    assert all(LRFLIP.asks[COND_INDEX[c]] == COND_INDEX[c] for c in SAGITTAL)
    x = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    assert torch.equal(VFLIP.transform(x)[:, :, 0], x[:, :, -1])
    assert torch.equal(LRFLIP.transform(x)[..., 0], x[..., -1])


def test_an_unknown_or_repeated_view_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"'hflip'.*vflip, lrflip"):
        PredictConfig(tta=["hflip"])
    with pytest.raises(ConfigError, match=r"'rot90'.*vflip, lrflip"):
        config.load(PredictConfig, overrides=["tta=[vflip,rot90]"])
    with pytest.raises(ConfigError, match="'vflip' is listed twice"):
        config.load(PredictConfig, overrides=["tta=[vflip,vflip]"])
    with pytest.raises(ConfigError, match="'hflip'"):
        classify(experiment(), CROPS, CPU, ["hflip"], 3)


def test_the_old_boolean_setting_reads_as_views_and_keeps_old_outputs_current(tmp_path):
    """``tta: true`` of an old config is [vflip], ``false`` []; stamps record those two as the booleans they
    were written with before, so a submission or localised OOF made then is not made again."""
    (tmp_path / "old.yaml").write_text("tta: true\n")
    assert config.load(PredictConfig, tmp_path / "old.yaml").tta == ["vflip"]
    (tmp_path / "pipeline.yaml").write_text("predict: {tta: false}\n")
    assert config.load(PipelineConfig, tmp_path / "pipeline.yaml").predict.tta == []
    assert config.load(PredictConfig, overrides=["tta=[vflip,lrflip]"]).tta == ["vflip", "lrflip"]
    assert PredictConfig().tta == [] and PredictConfig(tta=True).tta == ["vflip"]
    assert dataclasses.replace(PredictConfig(tta=True), batch_size=8).tta == ["vflip"]
    assert view_names(False) == [] and stamp_value([]) is False and stamp_value(["vflip"]) is True
    assert stamp_value(["lrflip"]) == ["lrflip"] and stamp_value(["vflip", "lrflip"]) == ["vflip", "lrflip"]
    saved = tmp_path / "saved.yaml"
    config.save(PredictConfig(tta=["lrflip"]), saved)
    assert config.load(PredictConfig, saved).tta == ["lrflip"]
