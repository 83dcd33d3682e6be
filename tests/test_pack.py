"""The Kaggle pack in half precision: fold checkpoints about half the size, loaded by the normal inference
loader into float32 models, and predictions within a stated tolerance of the full-precision pack's.

Measured on the smoke-trained attention model (2 folds): over every crop of the smoke set's 36 training
studies the largest difference of a probability is 1.1e-3 and the official score moves by 5e-6; end to end
on its 6 test studies (localise, crop, classify, blend) 1.0e-3 and 9e-5. The tests allow 1e-2 and 1e-3.
The end-to-end prediction with a half pack is also run by tests/test_notebooks.py (the inference notebook).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lsdc import schema
from lsdc.crops import INDEX_CSV, load_crop
from lsdc.data import load_train_labels
from lsdc.experiment import BEST_PT, fill_with_prior, load_checkpoint, load_experiment_models, prior_probabilities
from lsdc.inference import PredictConfig, classify
from lsdc.localize import LOCALIZER_PT, Localizer
from lsdc.metric import score, solution_from_labels
from lsdc.pack import folder_size, halve_state, pack

PROB_TOLERANCE = 1e-2     # largest allowed difference of one probability, half against full precision
SCORE_TOLERANCE = 1e-3    # of the official score


@pytest.fixture(scope="module")
def packs(smoke_run, smoke_localizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("packs")
    cfg = PredictConfig(localizer=smoke_localizer["name"], experiments=[smoke_run["cfg"].experiment])
    return {"full": pack(smoke_run["out"], root / "full", cfg),
            "half": pack(smoke_run["out"], root / "half", cfg, half=True),
            "half_localizer": pack(smoke_run["out"], root / "half_localizer", cfg, half=True, half_localizer=True)}


def test_halve_state_keeps_integers_and_values_beyond_float16():
    state = {"w": torch.randn(4, 4), "big": torch.tensor([1e6]), "n": torch.tensor(7), "e": torch.zeros(0)}
    half = halve_state(state)
    assert half["w"].dtype == torch.float16 and half["e"].dtype == torch.float16
    assert half["big"].dtype == torch.float32 and half["n"].dtype == torch.int64


def test_half_pack_checkpoints_are_half_the_size_and_load_as_float32(smoke_run, packs):
    exp = smoke_run["cfg"].experiment
    full, half = (sorted((packs[k] / exp).glob(f"fold*/{BEST_PT}")) for k in ("full", "half"))
    assert len(full) == len(half) == 2
    for f, h in zip(full, half):
        ratio = h.stat().st_size / f.stat().st_size
        assert 0.45 < ratio < 0.6, ratio      # weights halved; the config and statistics stay as they were
        model, meta = load_checkpoint(h)
        reference, _ = load_checkpoint(f)
        assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
        for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
            if p.is_floating_point():
                torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)
    assert folder_size(packs["half"]) < folder_size(packs["full"])
    assert '"checkpoints": "float16"' in (packs["half"] / "manifest.json").read_text()
    loc_dir = packs["half_localizer"] / json.loads((packs["half_localizer"] / "manifest.json").read_text())["localizer"]
    payload = torch.load(loc_dir / LOCALIZER_PT, weights_only=False)
    assert all(t.dtype == torch.float16 for states in payload["models"].values() for sd in states
               for t in sd.values() if t.is_floating_point())
    loc = Localizer.load(loc_dir)
    assert all(p.dtype == torch.float32 for ms in loc.models.values() for m in ms for p in m.parameters())


def test_half_pack_classifies_every_crop_within_tolerance(smoke_run, packs):
    """Every crop of the smoke training set classified by both packs' fold models (mean over folds)."""
    exp, crops = smoke_run["cfg"].experiment, smoke_run["cfg"].crops
    index = pd.read_csv(smoke_run["out"] / crops.dirname / INDEX_CSV, keep_default_na=False)
    batch = {(r.study_id, r.condition, r.level): load_crop(smoke_run["out"] / crops.dirname / r.path, crops.n_slices)
             for r in index.itertuples(index=False)}
    probs = {}
    for key in ("full", "half"):
        models = load_experiment_models(packs[key] / exp)
        out = {}
        for study in sorted({s for s, _, _ in batch}):
            cells = {(c, lv): crop for (s, c, lv), crop in batch.items() if s == study}
            per_fold = classify(models, cells, torch.device("cpu"), [], 64)
            out.update({schema.row_id(study, c, lv): np.mean([f[(c, lv)] for f in per_fold.values()], axis=0)
                        for (c, lv) in cells})
        probs[key] = out
    diff = np.abs(np.stack(list(probs["full"].values())) - np.stack([probs["half"][k] for k in probs["full"]]))
    assert diff.max() <= PROB_TOLERANCE, diff.max()
    labels = load_train_labels(smoke_run["data"])
    solution = solution_from_labels(labels)
    prior = prior_probabilities(labels)
    scores = {}
    for key, rows in probs.items():
        frame = pd.DataFrame([{"row_id": r, **dict(zip(schema.SEVERITY_COLUMNS, p.tolist()))} for r, p in rows.items()])
        scores[key] = score(solution, fill_with_prior(solution.row_id.tolist(), frame, prior))["score"]
    assert abs(scores["full"] - scores["half"]) <= SCORE_TOLERANCE, scores

