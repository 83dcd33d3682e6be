"""The metric-shaped loss against lsdc.metric, and the learning-rate schedule, on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lsdc import metric, schema
from lsdc.experiment import COND_INDEX
from lsdc.losses import any_severe_term, metric_loss, weighted_ce
from lsdc.schedule import lr_factor

WEIGHTS = torch.tensor(schema.SEVERITY_WEIGHTS)


def whole_studies(n_studies: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """All 25 crops of each study: logits (B, 3), targets, condition indices, study ids; a few severe spinal."""
    rng = np.random.default_rng(seed)
    cells = [(1000 + s, c, lv) for s in range(n_studies) for c in schema.CONDITIONS for lv in schema.LEVELS]
    logits = torch.tensor(rng.normal(0, 1.5, (len(cells), 3)), dtype=torch.float32)
    target = torch.tensor(rng.choice(3, len(cells), p=[0.6, 0.25, 0.15]))
    cond = torch.tensor([COND_INDEX[c] for _, c, _ in cells])
    study = np.array([s for s, _, _ in cells])
    return logits, target, cond, study


def as_frames(logits: torch.Tensor, target: torch.Tensor, cond: torch.Tensor, study: np.ndarray
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    levels = [lv for _ in range(len(set(study))) for _ in schema.CONDITIONS for lv in schema.LEVELS]
    rid = [schema.row_id(int(s), schema.CONDITIONS[int(c)], lv) for s, c, lv in zip(study, cond, levels)]
    onehot = np.eye(3)[target.numpy()]
    solution = pd.DataFrame({"row_id": rid, **dict(zip(schema.SEVERITY_COLUMNS, onehot.T)),
                             "sample_weight": WEIGHTS.numpy()[target.numpy()]})
    probs = torch.softmax(logits.double(), 1).numpy()
    return solution, pd.DataFrame({"row_id": rid, **dict(zip(schema.SEVERITY_COLUMNS, probs.T))})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_loss_on_whole_studies_is_the_official_score(seed):
    logits, target, cond, study = whole_studies(4, seed)
    solution, submission = as_frames(logits, target, cond, study)
    official = metric.score(solution, submission)
    index = torch.as_tensor(np.unique(study, return_inverse=True)[1])
    loss, weight = any_severe_term(logits, target, cond, index, WEIGHTS)
    assert float(loss / weight) == pytest.approx(official[metric.ANY_SEVERE_KEY], rel=1e-5)
    assert float(metric_loss(logits, target, cond, index, WEIGHTS)) == pytest.approx(official["score"], rel=1e-5)


def test_any_severe_term_by_hand():
    """One study's five spinal crops: largest severe probability 0.5, one crop severe -> weight 4, -4 ln 0.5;
    a second study with no severe crop, largest severe probability 0.2, largest class weight 2 -> -2 ln 0.8."""
    severe = torch.tensor([0.1, 0.5, 0.2, 0.3, 0.1, 0.2, 0.1, 0.1, 0.05, 0.05])
    logits = torch.log(torch.stack([(1 - severe) / 2, (1 - severe) / 2, severe], 1))
    target = torch.tensor([0, 2, 0, 1, 0, 1, 0, 0, 0, 0])
    cond = torch.full((10,), COND_INDEX[schema.condition_for("spinal")])
    study = torch.tensor([0] * 5 + [1] * 5)
    loss, weight = any_severe_term(logits, target, cond, study, WEIGHTS)
    assert float(weight) == pytest.approx(6.0)
    assert float(loss) == pytest.approx(-4 * math.log(0.5) - 2 * math.log(0.8), rel=1e-6)


def test_metric_loss_averages_only_the_terms_the_batch_has():
    """Foraminal crops only: no spinal crop, so neither the spinal nor the any-severe term; the loss is the
    foraminal group's weighted cross-entropy."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
    target = torch.tensor([0, 1, 2])
    cond = torch.full((3,), COND_INDEX[schema.condition_for("foraminal", "left")])
    loss = metric_loss(logits, target, cond, torch.zeros(3, dtype=torch.long), WEIGHTS)
    assert float(loss) == pytest.approx(float(weighted_ce(logits, target, WEIGHTS)), rel=1e-6)
    # Adding one spinal crop of a severe study adds two terms: spinal and any-severe, both -ln p_severe.
    logits2 = torch.cat([logits, torch.log(torch.tensor([[0.25, 0.25, 0.5]]))])
    target2, cond2 = torch.cat([target, torch.tensor([2])]), torch.cat([cond, torch.tensor([COND_INDEX[
        schema.condition_for("spinal")]])])
    loss2 = metric_loss(logits2, target2, cond2, torch.zeros(4, dtype=torch.long), WEIGHTS)
    assert float(loss2) == pytest.approx((float(loss) + 2 * -math.log(0.5)) / 3, rel=1e-6)


def test_metric_loss_has_finite_gradients_through_the_maximum():
    logits, target, cond, study = whole_studies(2, 5)
    logits.requires_grad_(True)
    metric_loss(logits, target, cond, torch.as_tensor(np.unique(study, return_inverse=True)[1]), WEIGHTS).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_lr_factor_by_hand():
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert lr_factor(0, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(1, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)      # halfway through the 8 decay steps
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(3, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    with pytest.raises(ValueError, match="linear"):
        lr_factor(0, 10, 2, "linear")
