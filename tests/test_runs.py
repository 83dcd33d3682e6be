"""Pictures of every run (lsdc.run_figures): the training curves of an experiment and the OOF chart are PNGs
of the expected size and not blank, drawn with or without the per-epoch score (older epochs files lack it),
kept when their inputs have not changed and redrawn when they have. On hand-written run files, no training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lsdc import run_figures as runs
from lsdc.ensemble import ENSEMBLE, NESTED
from lsdc.plotting import DPI

MODELS = ("attention_x", "densenet201_x")


def write_experiment(folder: Path, with_score: bool = True, n_epochs: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for fold in (0, 1):
        e = np.arange(1, n_epochs + 1)
        df = pd.DataFrame({"epoch": e, "train_loss": 1.2 / e + rng.uniform(0, 0.05, len(e)),
                           "val_loss": 1.0 / np.sqrt(e) + rng.uniform(0, 0.1, len(e)),
                           "val_acc": 0.6 + 0.05 * e / n_epochs})
        if with_score:
            df["val_score"] = 0.9 / np.sqrt(e) + rng.uniform(0, 0.05, len(e))
        df["seconds"], df["best"] = 1.0, df.val_loss == df.val_loss.cummin()
        (folder / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        df.to_csv(folder / f"fold{fold}" / "epochs.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"oof_score": {"score": 0.61}, "prior_score": {"score": 0.98}}))
    return folder


def write_table(path: Path, shift: float) -> None:
    rows = [{"model": m, "kind": m.split("_")[0], "ensemble": m.startswith(ENSEMBLE),
             **{t: 0.4 + 0.1 * i + shift for t in ("score", "spinal", "foraminal", "subarticular",
                                                    "any_severe_spinal")}}
            for i, m in enumerate((ENSEMBLE, NESTED, *MODELS))]
    table = pd.DataFrame(rows)
    if shift == 0:      # a table with intervals and the shipped row (older tables have neither)
        table = table.assign(score_lo=table.score - 0.05, score_hi=table.score + 0.07, chosen=table.model == NESTED)
    table.to_csv(path, index=False)


def image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, path
    assert img.std() > 10, f"{path} looks blank"
    return img


def test_curves_with_the_score_per_epoch_and_without(tmp_path):
    new = runs.plot_curves(write_experiment(tmp_path / "new"))
    assert new == tmp_path / "new" / runs.CURVES_PNG
    w, h = runs.CURVE_PANEL_IN
    assert image(new).shape[:2] == (round(h * DPI), round(2 * w * DPI))          # loss | score
    old = runs.plot_curves(write_experiment(tmp_path / "old", with_score=False))
    assert image(old).shape[:2] == (round(h * DPI), round(w * DPI))              # loss only
    assert runs.plot_curves(tmp_path / "empty") is None


def test_oof_chart_has_a_row_per_model_and_a_panel_per_score(tmp_path):
    write_table(tmp_path / "oof_table.csv", 0.0)
    assert runs.read_oof_tables(tmp_path).keys() == {"annotated points"}
    only_annotated = runs.plot_oof_chart(tmp_path)
    write_table(tmp_path / "oof_localized_table.csv", 0.05)
    both = runs.plot_oof_chart(tmp_path, tmp_path / "both.png")
    n = 2 + len(MODELS)
    expected = (round((n * runs.CHART_ROW_IN + runs.CHART_EXTRA_IN) * DPI), round(5 * runs.CHART_PANEL_W_IN * DPI))
    assert image(only_annotated).shape[:2] == expected == image(both).shape[:2]
    assert runs.plot_oof_chart(tmp_path / "nothing") is None


def test_run_figures_are_kept_until_their_inputs_change(tmp_path):
    for m in MODELS:
        write_experiment(tmp_path / m)
    write_table(tmp_path / "oof_table.csv", 0.0)
    drawn = runs.draw_run_figures(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in drawn) == sorted(
        [f"{m}/curves.png" for m in MODELS] + ["oof_chart.png"])
    for p in drawn:
        os.utime(p, ns=(1, 1))
    assert runs.draw_run_figures(tmp_path) == drawn
    assert all(p.stat().st_mtime_ns == 1 for p in drawn)                         # nothing redrawn
    write_experiment(tmp_path / MODELS[0], n_epochs=6)                          # one more epoch
    write_table(tmp_path / "oof_localized_table.csv", 0.05)                     # the localised table appears
    runs.draw_run_figures(tmp_path, experiments=[MODELS[0]])
    changed = {p.relative_to(tmp_path).as_posix() for p in drawn if p.stat().st_mtime_ns != 1}
    assert changed == {f"{MODELS[0]}/curves.png", "oof_chart.png"}
