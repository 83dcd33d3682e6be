"""The paper's evaluation report: tables equal scikit-learn on the saved predictions, figures are real
PNGs of the expected size, attention maps keep their definitions, the synthetic-data disclaimer.

No training: experiment folders are written by hand (config.yaml, oof_paper.csv, metrics.json) and the
full attention model gets two randomly initialised fold checkpoints whose predictions ARE its saved
out-of-fold predictions, so a case explained with the wrong fold's checkpoint would show.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from lsdc import config as config_mod
from lsdc import schema
from lsdc.comparison import PAPER_VARIANTS, variant_config
from lsdc.crops import INDEX_COLUMNS, CropConfig, load_crop, save_crop
from lsdc.errors import ConfigError, DataError
from lsdc.experiment import (
    COND_INDEX,
    N_CONDITIONS,
    ExperimentConfig,
    FoldConfig,
    load_checkpoint,
    save_checkpoint,
    to_input,
)
from lsdc.explain import explain, grad_cam, target_layer
from lsdc.models import AttentionConfig, ModelConfig, create_model
from lsdc.paper import PAPER_CLASSES
from lsdc.plotting import DPI
from lsdc.report import SYNTHETIC_DISCLAIMER, build_report, markdown_table
from lsdc.report import figures as fig
from lsdc.report.tables import ALL
from lsdc.synthetic import MARKER
from lsdc.train.config import TrainConfig

ROOT = Path(__file__).parents[1]
SIZE = 64
N_STUDIES = 12
SMALL_MODEL = {"head_widths": (8, 16), "eim_widths": (16, 32), "num_heads": 4, "num_slots": 3, "slot_dim": 16,
               "slot_iters": 2, "tail_widths": (16,), "reduction": 4}
MEAN, STD = [0.4, 0.4, 0.4], [0.25, 0.25, 0.25]
FULL = "attention_paper_t"
ABLATED = {"attention_paper_t_no_cbam": "use_cbam", "attention_paper_t_no_mhsa": "use_mhsa",
           "attention_paper_t_no_slot": "use_slot"}
BASELINE = "resnet18_paper_t"


def _cfg(**attention: object) -> ExperimentConfig:
    return ExperimentConfig(tag="t", crops=CropConfig(size=SIZE, n_slices=3), folds=FoldConfig(n_folds=2),
                            model=ModelConfig(attention=AttentionConfig(**{**SMALL_MODEL, **attention})),
                            train=TrainConfig(task="paper"))


def _crop(rng: np.random.Generator, severe: bool) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = 10 if severe else 20
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < radius**2) * 180.0
    noise = rng.normal(0, 20, (SIZE, SIZE, 3))
    return np.clip(disc[..., None] + 40 + noise, 0, 255).astype(np.uint8)


def _write_experiment(out: Path, name: str, cfg: ExperimentConfig, preds: pd.DataFrame, params: int,
                      seconds: float) -> None:
    exp = out / name
    config_mod.save(cfg, exp / "config.yaml")
    preds.to_csv(exp / "oof_paper.csv", index=False)
    fold_metrics = [{"fold": f, "train_seconds": seconds / 2, "params": params, "device": "cpu"} for f in (0, 1)]
    (exp / "metrics.json").write_text(json.dumps({"experiment": name, "task": "paper", "folds": [0, 1],
                                                  "train_seconds": seconds, "params": params,
                                                  "fold_metrics": fold_metrics}))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Crops, folds, six paper-task experiments (one with checkpoints), a competition one, an unfinished one."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("report")
    data, real, out = root / "synthetic", root / "real", root / "out"
    data.mkdir()
    (data / MARKER).write_text(json.dumps({"params": {"train_studies": N_STUDIES, "seed": 1}, "complete": True}))
    real.mkdir()
    cfg = _cfg()
    crops_dir = out / cfg.crops.dirname
    studies = list(range(1000, 1000 + N_STUDIES))
    rows = []
    for i, sid in enumerate(studies):
        for c, cond in enumerate(schema.CONDITIONS):
            for level in ("L3/L4", "L4/L5"):
                label = schema.SEVERITIES[2] if (i + c) % 3 == 0 else schema.SEVERITIES[0]
                if level == "L4/L5" and (i + 2 * c) % 7 == 0:
                    label = schema.SEVERITIES[1]               # moderate: not in the paper task
                rel = f"{sid}/{schema.CONDITION_INFO[cond].slug}_{level.replace('/', '_')}.png"
                save_crop(crops_dir / rel, _crop(rng, label == schema.SEVERITIES[2]))
                rows.append({"study_id": sid, "condition": cond, "level": level, "label": label, "series_id": 1,
                             "instance_number": 1, "x": 1.0, "y": 1.0, "path": rel})
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    index.to_csv(crops_dir / "index.csv", index=False)
    folds = pd.DataFrame({"study_id": studies, "fold": [i % 2 for i in range(N_STUDIES)]})
    folds.to_csv(out / "folds_2.csv", index=False)

    task = index[(index.level == "L4/L5") & (index.label != schema.SEVERITIES[1])].merge(folds, on="study_id")
    base = task[["study_id", "condition", "level", "label"]].assign(
        target=(task.label == schema.SEVERITIES[2]).astype(int)).reset_index(drop=True)

    # The full model: its saved predictions are its fold checkpoints' predictions.
    probs = np.zeros(len(base))
    for fold in (0, 1):
        torch.manual_seed(100 + fold)
        model = create_model(cfg.network_config()).eval()
        save_checkpoint(out / FULL / f"fold{fold}" / "best.pt",
                        {"config": config_mod.to_dict(cfg), "classes": list(PAPER_CLASSES),
                         "conditions": list(schema.CONDITIONS), "mean": MEAN, "std": STD, "fold": fold,
                         "model": model.state_dict(), "epoch": 1, "val_loss": 0.5})
        sel = (task.fold == fold).to_numpy()
        x = to_input(np.stack([load_crop(crops_dir / p, 3) for p in task.path[sel]]), MEAN, STD)
        cond = torch.tensor(task.condition[sel].map(COND_INDEX).to_list())
        with torch.no_grad():
            logits = model(x).view(len(x), N_CONDITIONS, 2)[torch.arange(len(x)), cond]
        probs[sel] = torch.softmax(logits, dim=1)[:, 1].numpy()
    full = base.assign(normal_mild=1 - probs, severe=probs)
    _write_experiment(out, FULL, cfg, full, 12345, 10.0)

    def noisy(strength: float) -> pd.DataFrame:
        p = np.clip(0.5 + strength * (base.target - 0.5) + rng.normal(0, 0.25, len(base)), 0.01, 0.99)
        return base.assign(normal_mild=1 - p, severe=p)

    for k, (name, switch) in enumerate(ABLATED.items()):
        _write_experiment(out, name, _cfg(**{switch: False}), noisy(0.3 + 0.1 * k), 10000 - k, 8.0 + k)
    _write_experiment(out, BASELINE, dataclasses.replace(_cfg(), model=ModelConfig(name="resnet18")),
                      noisy(0.5), 11_000_000, 30.0)
    comp = dataclasses.replace(_cfg(), train=TrainConfig(task="competition"), tag="comp")
    config_mod.save(comp, out / "attention_comp" / "config.yaml")
    config_mod.save(_cfg(num_heads=2), out / "attention_paper_unfinished" / "config.yaml")

    report = build_report(out, data)
    return {"out": out, "data": data, "real": real, "report": report, "crops_dir": crops_dir, "index": index}


def _sk(df: pd.DataFrame) -> dict[str, float]:
    y, p = df.target.to_numpy(), df.severe.to_numpy()
    pred = (p >= 0.5).astype(int)
    return {"n": len(y), "severe": int(y.sum()), "accuracy": accuracy_score(y, pred),
            "precision": precision_score(y, pred, zero_division=0), "recall": recall_score(y, pred, zero_division=0),
            "f1": f1_score(y, pred, zero_division=0),
            "f1_macro": f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0),
            "auc": roc_auc_score(y, p) if len(set(y)) == 2 else float("nan")}


def _assert_scores(row: pd.Series, df: pd.DataFrame) -> None:
    for key, value in _sk(df).items():
        assert row[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def test_experiments_found_and_unfinished_or_other_task_left_out(outputs):
    r = outputs["report"]
    assert r.experiments == sorted([FULL, *ABLATED, BASELINE])
    assert r.skipped == ["attention_paper_unfinished"]


def test_table2_equals_sklearn_on_saved_predictions(outputs):
    out, r = outputs["out"], outputs["report"]
    t2 = r.tables["table2_models"]
    text = r.markdown.read_text()
    assert markdown_table(t2) in text
    for _, row in t2.iterrows():
        preds = pd.read_csv(out / row.experiment / "oof_paper.csv")
        _assert_scores(row, preds)
        metrics = json.loads((out / row.experiment / "metrics.json").read_text())
        assert row.params == metrics["params"] and row.train_seconds == metrics["train_seconds"]
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {row.experiment} |"))
        assert (f"| {100 * row.accuracy:.1f} [{100 * row.accuracy_lo:.1f}, {100 * row.accuracy_hi:.1f}] |" in line
                and f"| {row.auc:.3f} [" in line)
        for m in ("accuracy", "f1", "auc"):              # intervals around each value; paired differences
            assert row[f"{m}_lo"] <= row[m] <= row[f"{m}_hi"], (row.experiment, m)
            assert row[f"d_{m}_lo"] <= row[f"d_{m}"] <= row[f"d_{m}_hi"]
        full = pd.read_csv(out / FULL / "oof_paper.csv")
        assert row.d_f1 == pytest.approx(_sk(preds)["f1"] - _sk(full)["f1"], abs=1e-12)
    labels = dict(zip(t2.experiment, t2.model))
    assert labels[FULL] == "attention" and labels["attention_paper_t_no_cbam"] == "attention w/o CBAM"
    assert labels[BASELINE] == "resnet18"


def test_table3_per_condition_equals_sklearn(outputs):
    out, r = outputs["out"], outputs["report"]
    t3 = r.tables["table3_conditions"]
    assert markdown_table(t3) in r.markdown.read_text()
    assert len(t3) == len(r.experiments) * len(schema.CONDITIONS)
    for _, row in t3.iterrows():
        preds = pd.read_csv(out / row.experiment / "oof_paper.csv")
        _assert_scores(row, preds[preds.condition == row.condition])


def test_table4_ablations_from_config_switches(outputs):
    out, r = outputs["out"], outputs["report"]
    t4 = r.tables["table4_ablations"]
    assert markdown_table(t4) in r.markdown.read_text()
    assert list(dict.fromkeys(t4.experiment)) == [FULL, *ABLATED]     # baseline not an ablation; full first
    assert set(t4.removed) == {"none", "cbam", "mhsa", "slot"}
    full = pd.read_csv(out / FULL / "oof_paper.csv")
    for _, row in t4.iterrows():
        preds = pd.read_csv(out / row.experiment / "oof_paper.csv")
        ref = full
        if row.condition != ALL:
            preds, ref = preds[preds.condition == row.condition], full[full.condition == row.condition]
        _assert_scores(row, preds)
        assert row.d_f1 == pytest.approx(_sk(preds)["f1"] - _sk(ref)["f1"], abs=1e-12)
        assert row.d_auc_lo <= row.d_auc <= row.d_auc_hi
        if row.removed == "none":
            assert row.d_accuracy == row.d_accuracy_lo == row.d_accuracy_hi == 0.0


def test_figures_are_png_of_expected_size_and_not_blank(outputs):
    r = outputs["report"]
    n_exp, n_cond = len(r.experiments), len(schema.CONDITIONS)
    expected = {
        "confusion": (n_exp * fig.CONFUSION_CELL_IN[1], (n_cond + 1) * fig.CONFUSION_CELL_IN[0]),
        "roc": (2 * fig.ROC_CELL_IN[1], fig.ROC_COLS * fig.ROC_CELL_IN[0]),
        "bars": (fig.BAR_SIZE_IN[1], fig.BAR_SIZE_IN[0]),
    }
    cases = [k for k in r.figures if k.startswith("cases/")]
    assert sorted(cases) == sorted(f"cases/{FULL}/{schema.CONDITION_INFO[c].slug}" for c in schema.CONDITIONS)
    for key in cases:    # crop, Grad-CAM, CBAM, MHSA, slots; correct | misclassified
        expected[key] = (2 * fig.CASE_CELL_IN + 0.5, 10 * fig.CASE_CELL_IN)
    text = r.markdown.read_text()
    for key, (h_in, w_in) in expected.items():
        path = r.figures[key]
        img = cv2.imread(str(path))
        assert img is not None, path
        assert img.shape[:2] == (round(h_in * DPI), round(w_in * DPI)), key
        assert img.std() > 10, f"{key} looks blank"
        assert f"]({path.name})" in text
    for name in ("table2_models", "table3_conditions", "table4_ablations", "misclassified", "cases"):
        assert (r.report_dir / f"{name}.csv").is_file()


def test_cases_use_the_checkpoint_of_their_held_out_fold(outputs):
    cases = outputs["report"].cases
    assert not cases.empty and set(cases.experiment) == {FULL}
    folds = pd.read_csv(outputs["out"] / "folds_2.csv").set_index("study_id").fold
    assert (cases.fold.to_numpy() == folds[cases.study_id].to_numpy()).all()
    assert np.allclose(cases.p_severe_recomputed, cases.p_severe_saved, atol=1e-5)
    assert {"correct", "misclassified"} == set(cases.outcome)


def test_attention_maps_have_crop_shape_and_their_definitions(outputs):
    out, index = outputs["out"], outputs["index"]
    model, meta = load_checkpoint(out / FULL / "fold0" / "best.pt")
    row = index[index.level == "L4/L5"].iloc[3]
    x = to_input(load_crop(outputs["crops_dir"] / row.path, 3)[None], meta["mean"], meta["std"])
    maps = explain(model, x, COND_INDEX[row.condition], 2)
    assert maps.probs.shape == (2,) and maps.probs.sum() == pytest.approx(1.0, abs=1e-6)
    for m in (maps.gradcam, maps.cbam, maps.mhsa):
        assert m is not None and m.shape == (SIZE, SIZE)
    assert maps.gradcam.min() >= 0 and maps.gradcam.max() <= 1
    assert maps.cbam.min() >= 0 and maps.cbam.max() <= 1
    assert maps.mhsa.min() >= 0 and maps.mhsa.sum() == pytest.approx(1.0, abs=1e-5)
    assert maps.slots.shape == (SMALL_MODEL["num_slots"], SIZE, SIZE)
    assert np.allclose(maps.slots.sum(axis=0), 1.0, atol=1e-5) and maps.slots.min() >= 0
    heads, n, n2 = maps.mhsa_tokens.shape
    assert heads == SMALL_MODEL["num_heads"] and n == n2
    assert np.allclose(maps.mhsa_tokens.sum(axis=-1), 1.0, atol=1e-5)
    d = fig.mhsa_display(maps.mhsa)
    assert d.min() >= 0 and d.max() <= 1


def test_gradcam_on_a_timm_model_uses_its_last_feature_stage():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=N_CONDITIONS * 2).eval()
    assert target_layer(model) is model.layer4
    cam, probs = grad_cam(model, torch.randn(1, 3, SIZE, SIZE), cond=2, k=2)
    assert cam.shape == (SIZE, SIZE) and 0 <= cam.min() and cam.max() <= 1
    assert probs.shape == (2,)
    assert not model.layer4._forward_hooks                     # hooks removed


def test_disclaimer_only_on_synthetic_data(outputs, tmp_path):
    assert SYNTHETIC_DISCLAIMER in outputs["report"].markdown.read_text()
    real = build_report(outputs["out"], outputs["real"], experiments=[FULL, BASELINE], cases_for=[],
                            report_dir=tmp_path / "real_report")
    text = real.markdown.read_text()
    assert SYNTHETIC_DISCLAIMER not in text and "real competition data" in text
    assert real.cases.empty and not any(k.startswith("cases/") for k in real.figures)


def test_user_errors_name_the_experiment_or_file(outputs):
    out, data = outputs["out"], outputs["data"]
    with pytest.raises(DataError, match="attention_missing"):
        build_report(out, data, experiments=["attention_missing"])
    with pytest.raises(DataError, match="attention_comp.*competition"):
        build_report(out, data, experiments=["attention_comp"])
    with pytest.raises(DataError, match="oof_paper.csv"):
        build_report(out, data, experiments=["attention_paper_unfinished"])
    with pytest.raises(DataError, match="nowhere"):
        build_report(out, out / "nowhere")
    with pytest.raises(DataError, match=BASELINE):
        build_report(out, data, experiments=[FULL], cases_for=[BASELINE], report_dir=out / "unused")
    assert not (out / "unused").exists()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "06_paper_report.py"), "--output-dir", str(out),
                           "--data-dir", str(data), "--experiments", "attention_missing"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error:" in proc.stderr and "attention_missing" in proc.stderr


def test_comparison_variants_differ_only_where_they_should():
    base = config_mod.load(ExperimentConfig, ROOT / "configs" / "paper_smoke.yaml")
    cfgs = {v: variant_config(base, v, baseline_steps=2) for v in PAPER_VARIANTS}
    assert len({c.experiment for c in cfgs.values()}) == len(cfgs)
    assert all(c.train.task == "paper" for c in cfgs.values())
    assert cfgs["attention"].experiment == "attention_paper_smoke"
    assert cfgs["no_mhsa"].experiment == "attention_paper_smoke_no_mhsa"
    assert not cfgs["no_mhsa"].model.attention.use_mhsa
    no_cbam = cfgs["no_cbam"].model.attention
    assert no_cbam.use_mhsa and no_cbam.use_slot and not no_cbam.use_cbam
    assert cfgs["densenet201"].model.name == "densenet201" and cfgs["densenet201"].train.max_steps_per_epoch == 2
    assert cfgs["attention"].train.max_steps_per_epoch is None
    assert cfgs["resnet101"].crops == base.crops and cfgs["resnet101"].folds == base.folds
    with pytest.raises(ConfigError, match="attention model"):
        variant_config(cfgs["densenet201"], "no_cbam")
