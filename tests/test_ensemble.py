"""Ensemble fitting, blending, the OOF comparison table and scripts/04_ensemble.py, on hand-built OOF frames."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from lsdc import bootstrap, metric, schema
from lsdc.ensemble import (
    FOLD_AVERAGES,
    NESTED,
    SPEC_JSON,
    TABLE_CSV,
    TABLE_MD,
    EnsembleConfig,
    EnsembleFit,
    EnsembleSpec,
    align_oofs,
    apply_ensemble,
    blend_folds,
    build_ensemble,
    comparison_table,
    discover_experiments,
    ensemble_oof_name,
    experiment_kind,
    fit_blend,
    fit_ensemble,
    load_ensemble,
    nested_predictions,
    save_ensemble,
    table_markdown,
)
from lsdc.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "04_ensemble.py"
SEV = list(schema.SEVERITY_COLUMNS)
ROW_ID = metric.ROW_ID
SPINAL, FORAMINAL, SUBARTICULAR = schema.GROUPS
N_STUDIES = 40
CLASS_MIX = {SPINAL: (0.80, 0.12, 0.08), FORAMINAL: (0.70, 0.22, 0.08), SUBARTICULAR: (0.65, 0.22, 0.13)}


def make_labels(n: int = N_STUDIES, seed: int = 0) -> pd.DataFrame:
    """A train.csv-shaped frame: class mix per group, about 3% empty cells."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"study_id": 1000 + 7 * np.arange(n)}
    for col in schema.LABEL_COLUMNS:
        sev = rng.choice(len(schema.SEVERITIES), size=n, p=CLASS_MIX[schema.group_of_column(col)])
        values = np.array(schema.SEVERITIES, dtype=object)[sev]
        values[rng.random(n) < 0.03] = np.nan
        data[col] = values
    return pd.DataFrame(data)


def make_oof(labels: pd.DataFrame, noise: dict[str, float], seed: int, signal: float = 2.0,
             sharpen: float = 1.0) -> pd.DataFrame:
    """Submission-format OOF of a 'model': logits = signal * one-hot(label) + group noise, times sharpen."""
    rng = np.random.default_rng(seed)
    row_ids = [r for s in labels.study_id for r in schema.study_row_ids(s)]
    cells = labels[list(schema.LABEL_COLUMNS)].to_numpy(dtype=object).ravel()
    y = np.array([schema.SEVERITY_INDEX.get(c, rng.integers(3)) if isinstance(c, str) else rng.integers(3)
                  for c in cells])
    sigma = np.array([noise[schema.group_of_column(r.split("_", 1)[1])] for r in row_ids])
    logits = (signal * np.eye(3)[y] + sigma[:, None] * rng.normal(size=(len(y), 3))) * sharpen
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return pd.DataFrame({ROW_ID: row_ids, **{c: p[:, k] for k, c in enumerate(SEV)}})


def noise_oof(labels: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Probabilities unrelated to the labels."""
    rng = np.random.default_rng(seed)
    row_ids = [r for s in labels.study_id for r in schema.study_row_ids(s)]
    p = rng.dirichlet(np.ones(3), size=len(row_ids))
    return pd.DataFrame({ROW_ID: row_ids, **{c: p[:, k] for k, c in enumerate(SEV)}})


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return make_labels()


@pytest.fixture(scope="module")
def two_models(labels: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """'a' is good on spinal and bad on foraminal, 'b' the reverse; equal on subarticular."""
    return {
        "a": make_oof(labels, {SPINAL: 0.5, FORAMINAL: 3.0, SUBARTICULAR: 1.5}, seed=1),
        "b": make_oof(labels, {SPINAL: 3.0, FORAMINAL: 0.5, SUBARTICULAR: 1.5}, seed=2),
    }


def fold_map(labels: pd.DataFrame, k: int = 5) -> dict[int, int]:
    return {int(s): i % k for i, s in enumerate(labels.study_id)}


@pytest.fixture(scope="module")
def two_fit(two_models: dict[str, pd.DataFrame], labels: pd.DataFrame) -> EnsembleFit:
    return fit_ensemble(two_models, labels, folds=fold_map(labels))


@pytest.fixture(scope="module")
def two_spec(two_fit: EnsembleFit) -> EnsembleSpec:
    return two_fit.spec


def official(labels: pd.DataFrame, frame: pd.DataFrame) -> dict[str, float]:
    return metric.score(metric.solution_from_labels(labels), frame)


def test_blend_ships_when_it_beats_every_single_model_out_of_fold(two_fit, two_models, labels):
    spec = two_fit.spec
    singles = {m: official(labels, df)["score"] for m, df in two_models.items()}
    assert two_fit.fitted and spec.models == ["a", "b"] and spec.shipped.startswith("blend of a, b")
    for m, s in singles.items():
        assert spec.oof_scores[m]["score"] == pytest.approx(s, abs=1e-12)
    # The reported score is the nested one: the official score of the OOF each fold got from the others' fit.
    assert official(labels, two_fit.oof) == pytest.approx(spec.nested_score, abs=1e-12)
    assert spec.nested_score["score"] < min(singles.values())
    # On the rows it was fitted on the same blend looks better than out of fold.
    blended = apply_ensemble(spec, two_models)
    assert official(labels, blended)["score"] == pytest.approx(spec.in_sample_score["score"], abs=1e-12)
    assert spec.in_sample_score["score"] < spec.nested_score["score"]
    # The fit's per-group objective is the official score's decomposition.
    assert sum(spec.fit["group_loss"].values()) / 4 == pytest.approx(spec.in_sample_score["score"], abs=1e-9)
    assert spec.weights[SPINAL]["a"] > spec.weights[SPINAL]["b"]
    assert spec.weights[FORAMINAL]["b"] > spec.weights[FORAMINAL]["a"]
    assert [s["accepted"] for s in spec.selection if s["accepted"]] and spec.selection[0]["models"] == [
        min(singles, key=singles.get)]


def test_weights_are_non_negative_and_sum_to_one(two_spec):
    for group in schema.GROUPS:
        w = np.array(list(two_spec.weights[group].values()))
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
        assert two_spec.temperatures[group] > 0


def test_pure_noise_model_gets_no_weight_and_the_score_is_nested(two_models, labels):
    """Two good, complementary models and one of pure noise: the shipped spec blends the good ones only,
    and the score it reports is the nested one (not the in-sample one, which is lower)."""
    oofs = {**two_models, "noise": noise_oof(labels, seed=3)}
    fit = fit_ensemble(oofs, labels, folds=fold_map(labels))
    assert sorted(fit.spec.models) == ["a", "b"]
    assert all("noise" not in w for w in fit.spec.weights.values())
    assert fit.spec.nested_score == pytest.approx(official(labels, fit.oof), abs=1e-12)
    assert fit.spec.nested_score["score"] > fit.spec.in_sample_score["score"]
    assert "noise" in fit.spec.oof_scores            # it was considered, and its score is on record


def test_the_shipped_spec_is_not_chosen_in_sample(labels):
    """One informative model and four of pure noise: fitted and scored on the same rows, a blend with the
    noise looks better than the good model alone; out of fold it does not, and the good model ships alone."""
    folds = fold_map(labels)
    good = make_oof(labels, {SPINAL: 2.5, FORAMINAL: 2.5, SUBARTICULAR: 2.5}, seed=11, signal=1.5)
    oofs = {"good": good, **{f"noise{k}": noise_oof(labels, seed=20 + k) for k in range(4)}}
    in_sample = fit_blend(oofs, metric.solution_from_labels(labels))
    blended = apply_ensemble(in_sample.spec(list(oofs)), oofs)
    assert official(labels, blended)["score"] < official(labels, good)["score"]        # the in-sample illusion
    fit = fit_ensemble(oofs, labels, folds=folds)
    assert fit.spec.models == ["good"]
    nested_all = nested_predictions(oofs, metric.solution_from_labels(labels), folds)
    assert official(labels, nested_all)["score"] > fit.spec.nested_score["score"]


def test_temperature_fixes_an_overconfident_model_out_of_fold(labels):
    sharp = {"sharp": make_oof(labels, {g: 1.5 for g in schema.GROUPS}, seed=4, sharpen=4.0)}
    fitted = fit_ensemble(sharp, labels, folds=fold_map(labels))
    assert fitted.fitted and fitted.spec.shipped.startswith("sharp with fitted temperatures")
    assert fitted.spec.nested_score["score"] < fitted.spec.oof_scores["sharp"]["score"] - 0.05
    assert all(t > 1.0 for t in fitted.spec.temperatures.values())
    # Without temperatures one model has nothing to fit: the spec is that model, with exactly its score.
    plain = fit_ensemble(sharp, labels, temperature=False, folds=fold_map(labels))
    assert not plain.fitted and plain.spec.temperatures == {g: 1.0 for g in schema.GROUPS}
    assert plain.spec.nested_score == plain.spec.oof_scores["sharp"] == plain.spec.in_sample_score


def test_a_copy_never_helps_and_no_folds_ships_the_best_single_model(two_models, labels, caplog):
    same = {"a": two_models["a"], "a_copy": two_models["a"].copy()}
    spec = fit_ensemble(same, labels, temperature=False, folds=fold_map(labels)).spec
    assert spec.models == ["a"] and spec.weights[SPINAL] == {"a": 1.0}
    assert spec.nested_score == spec.oof_scores["a"]
    blind = fit_ensemble(two_models, labels)            # no folds: nothing can be judged out of fold
    assert not blind.fitted and blind.spec.models == [min(blind.spec.oof_scores,
                                                          key=lambda m: blind.spec.oof_scores[m]["score"])]
    assert "cannot be judged out of fold" in caplog.text


def test_fold_averages_are_the_hand_computed_rules():
    """Two fold models of one experiment at T = 2: 'tempered' averages the tempered folds, 'probs' tempers
    the average, 'logits' tempers the normalised geometric mean; one fold: every rule is apply_ensemble."""
    f0 = _frame({RID_SPINAL: (0.7, 0.2, 0.1)})
    f1 = _frame({RID_SPINAL: (0.1, 0.3, 0.6)})
    spec = _hand_spec({"m": 1.0}, {SPINAL: 2.0, FORAMINAL: 1.0, SUBARTICULAR: 1.0})

    def t2(p):
        q = np.sqrt(np.asarray(p))
        return q / q.sum()

    def rule(name):
        return blend_folds(spec, {"m": [f0, f1]}, name).set_index(ROW_ID).loc[RID_SPINAL].to_numpy()

    np.testing.assert_allclose(rule("tempered"), (t2([0.7, 0.2, 0.1]) + t2([0.1, 0.3, 0.6])) / 2, atol=1e-12)
    np.testing.assert_allclose(rule("probs"), t2([0.4, 0.25, 0.35]), atol=1e-12)
    geo = np.sqrt(np.array([0.7, 0.2, 0.1]) * np.array([0.1, 0.3, 0.6]))
    np.testing.assert_allclose(rule("logits"), t2(geo / geo.sum()), atol=1e-12)
    one = apply_ensemble(spec, {"m": f0}).set_index(ROW_ID).loc[RID_SPINAL].to_numpy()
    for name in FOLD_AVERAGES:
        np.testing.assert_allclose(blend_folds(spec, {"m": [f0]}, name).set_index(ROW_ID).loc[RID_SPINAL], one)
    with pytest.raises(ConfigError, match="fold_average"):
        blend_folds(spec, {"m": [f0]}, "median")


def _hand_spec(weights: dict[str, float], temperatures: dict[str, float] | None = None) -> EnsembleSpec:
    models = list(weights)
    return EnsembleSpec(models=models, weights={g: dict(weights) for g in schema.GROUPS},
                        temperatures=temperatures or {g: 1.0 for g in schema.GROUPS})


def _frame(rows: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame({ROW_ID: list(rows), **{c: [v[k] for v in rows.values()] for k, c in enumerate(SEV)}})


RID_SPINAL = schema.row_id(5, schema.condition_for(SPINAL), schema.LEVELS[3])
RID_FORAMEN = schema.row_id(5, schema.condition_for(FORAMINAL, "left"), schema.LEVELS[4])
RID_SUBART = schema.row_id(5, schema.condition_for(SUBARTICULAR, "right"), schema.LEVELS[2])


def test_apply_is_the_hand_computed_weighted_mean():
    a = _frame({RID_SPINAL: (0.7, 0.2, 0.1), RID_FORAMEN: (0.2, 0.5, 0.3)})
    b = _frame({RID_SPINAL: (0.1, 0.3, 0.6), RID_FORAMEN: (0.6, 0.2, 0.2)})
    out = apply_ensemble(_hand_spec({"a": 0.25, "b": 0.75}), {"a": a, "b": b}).set_index(ROW_ID)
    assert list(out.columns) == SEV
    np.testing.assert_allclose(out.loc[RID_SPINAL], [0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.2 + 0.75 * 0.3,
                                                     0.25 * 0.1 + 0.75 * 0.6], atol=1e-12)
    np.testing.assert_allclose(out.loc[RID_FORAMEN], [0.5, 0.275, 0.225], atol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)
    # Temperature 2 on the spinal group: each model's row becomes sqrt(p) renormalised first.
    temps = {SPINAL: 2.0, FORAMINAL: 1.0, SUBARTICULAR: 1.0}
    tempered = apply_ensemble(_hand_spec({"a": 0.25, "b": 0.75}, temps), {"a": a, "b": b}).set_index(ROW_ID)
    ta = np.sqrt([0.7, 0.2, 0.1]) / np.sqrt([0.7, 0.2, 0.1]).sum()
    tb = np.sqrt([0.1, 0.3, 0.6]) / np.sqrt([0.1, 0.3, 0.6]).sum()
    np.testing.assert_allclose(tempered.loc[RID_SPINAL], 0.25 * ta + 0.75 * tb, atol=1e-12)
    np.testing.assert_allclose(tempered.loc[RID_FORAMEN], out.loc[RID_FORAMEN], atol=1e-12)


def test_apply_renormalises_weights_over_the_models_present():
    a = _frame({RID_SPINAL: (0.7, 0.2, 0.1), RID_FORAMEN: (2.0, 1.0, 1.0), RID_SUBART: (np.nan,) * 3})
    b = _frame({RID_SPINAL: (0.1, 0.3, 0.6)})
    out = apply_ensemble(_hand_spec({"a": 0.25, "b": 0.75}), {"a": a, "b": b}).set_index(ROW_ID)
    np.testing.assert_allclose(out.loc[RID_FORAMEN], [0.5, 0.25, 0.25])    # 'a' alone, renormalised
    assert out.loc[RID_SUBART].isna().all()                                # no model: NaN for the caller
    assert not out.loc[RID_SPINAL].isna().any()
    # A model whose weight is 0 still carries the rows it alone predicts.
    only_b = apply_ensemble(_hand_spec({"a": 1.0, "b": 0.0}), {"b": b})
    np.testing.assert_allclose(only_b[SEV].to_numpy()[0], [0.1, 0.3, 0.6])
    with pytest.raises(DataError, match="none of the ensemble's models"):
        apply_ensemble(_hand_spec({"a": 1.0}), {"c": b})


def test_align_keeps_the_shared_rows(two_models, labels, caplog):
    a, b = two_models["a"], two_models["b"]
    dropped_study = labels.study_id.iloc[0]
    b_short = b[~b[ROW_ID].str.startswith(f"{dropped_study}_")]
    aligned = align_oofs({"a": a, "b": b_short})
    assert len(aligned["a"]) == len(aligned["b"]) == len(a) - 25
    assert (aligned["a"][ROW_ID].to_numpy() == aligned["b"][ROW_ID].to_numpy()).all()
    assert "25 of its" in caplog.text
    spec = fit_ensemble({"a": a, "b": b_short}, labels).spec
    assert spec.fit["n_studies"] == N_STUDIES - 1
    other = b.assign(**{ROW_ID: "9" + b[ROW_ID]})
    with pytest.raises(DataError, match="share no OOF row"):
        align_oofs({"a": a, "other": other})


def test_table_equals_the_metric_and_sklearn(two_fit, two_models, labels):
    ens = two_fit.oof
    table = comparison_table(two_models, labels, ensemble=ens, kinds={"a": "attention", "b": "densenet201"},
                             chosen=NESTED)
    assert list(table.model) == sorted(table.model, key=lambda m: table.set_index("model").loc[m, "score"])
    assert table.loc[0, "model"] == NESTED and bool(table.loc[0, "ensemble"]) and bool(table.loc[0, "chosen"])
    assert table.chosen.sum() == 1
    # Intervals: paired bootstrap over the same studies, the best row is the reference.
    expected = bootstrap.score_table(metric.solution_from_labels(labels), {**two_models, NESTED: ens})
    got = table.set_index("model")
    for _, row in expected.iterrows():
        for key in ("score_lo", "score_hi", "diff", "diff_lo", "diff_hi"):
            assert got.loc[row.model, key] == pytest.approx(row[key], abs=1e-12)
        assert got.loc[row.model, "score_lo"] <= got.loc[row.model, "score"] <= got.loc[row.model, "score_hi"]
    assert (table.vs == NESTED).all() and table.loc[0, "diff"] == 0.0
    md = table_markdown(table)
    assert f"**{NESTED}** (chosen)" in md and "[95% CI]" in md
    solution = metric.solution_from_labels(labels)
    y = solution[SEV].to_numpy().argmax(axis=1)
    conditions = solution[ROW_ID].map(lambda r: schema.parse_row_id(r)[1]).to_numpy()
    for name, frame in {**two_models, NESTED: ens}.items():
        row = table.set_index("model").loc[name]
        for key, value in official(labels, frame).items():
            assert row[key] == pytest.approx(value, abs=1e-12)
        probs = frame.set_index(ROW_ID).loc[solution[ROW_ID], SEV].to_numpy()
        probs = probs / probs.sum(axis=1, keepdims=True)
        for condition in schema.CONDITIONS:
            info = schema.CONDITION_INFO[condition]
            prefix = f"{info.side}_{info.group}" if info.side else info.group
            m = conditions == condition
            pred = probs[m].argmax(axis=1)
            assert row[f"{prefix}_acc"] == pytest.approx(accuracy_score(y[m], pred))
            assert row[f"{prefix}_f1"] == pytest.approx(f1_score(y[m], pred, average="macro", zero_division=0))
            if len(np.unique(y[m])) == 3:
                assert row[f"{prefix}_auc"] == pytest.approx(roc_auc_score(y[m], probs[m], multi_class="ovr"))
    assert table.set_index("model").loc["b", "kind"] == "densenet201"


def test_spec_round_trips_and_bad_specs_are_refused(two_spec, tmp_path):
    path = tmp_path / SPEC_JSON
    save_ensemble(two_spec, path)
    assert load_ensemble(path) == two_spec
    raw = json.loads(path.read_text())
    raw["weights"][SPINAL] = {m: 0.9 for m in raw["models"]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"bad\.json.*sum to 1"):
        load_ensemble(bad)
    with pytest.raises(DataError, match="not found"):
        load_ensemble(tmp_path / "missing.json")


def _write_experiment(out: Path, name: str, oof: pd.DataFrame, model: dict | None) -> None:
    (out / name).mkdir(parents=True)
    oof.to_csv(out / name / "oof.csv", index=False)
    if model is not None:
        (out / name / "config.yaml").write_text(yaml.safe_dump({"model": model}))


def test_discovery_and_kinds(tmp_path, two_models, labels):
    out = tmp_path / "outputs"
    _write_experiment(out, "attention_full", two_models["a"], {"name": "attention", "attention": {"use_cbam": True}})
    _write_experiment(out, "attention_nocbam", two_models["b"], {"name": "attention", "attention": {"use_cbam": False}})
    _write_experiment(out, "densenet201", two_models["b"], {"name": "densenet201"})
    (out / "crops_64px_3sl").mkdir()
    found = discover_experiments(out)
    assert list(found) == ["attention_full", "attention_nocbam", "densenet201"]
    assert found["densenet201"] == out / "densenet201" / "oof.csv"
    kinds = {n: experiment_kind(p.parent) for n, p in found.items()}
    assert kinds == {"attention_full": "attention", "attention_nocbam": "ablation", "densenet201": "densenet201"}
    with pytest.raises(ConfigError, match="nope"):
        build_ensemble(out, labels, EnsembleConfig(experiments=["nope"]))


def test_ensemble_on_another_oof_file(tmp_path, two_models, labels):
    """oof_file=oof_localized.csv: fitted on those files, its table beside (not over) oof_table.*."""
    out = tmp_path / "outputs"
    _write_experiment(out, "a", two_models["a"], {"name": "attention"})
    _write_experiment(out, "b", two_models["b"], {"name": "resnet101"})
    two_models["b"].to_csv(out / "a" / "oof_localized.csv", index=False)  # a's localised OOF = b's
    two_models["b"].to_csv(out / "b" / "oof_localized.csv", index=False)
    table, spec = build_ensemble(out, labels, EnsembleConfig(oof_file="oof_localized.csv"))
    assert (out / "oof_localized_table.md").is_file() and not (out / TABLE_MD).exists()
    scores = table.set_index("model").score
    assert scores["a"] == pytest.approx(scores["b"])  # both judged on b's predictions
    with pytest.raises(ConfigError, match="oof_file"):
        build_ensemble(out, labels, EnsembleConfig(oof_file="../x.csv"))


def test_script_writes_table_spec_and_the_ensemble_oof(tmp_path, two_models, labels):
    """With the experiments' folds file, the script chooses the blend out of fold, prints the table with its
    intervals, and writes the nested OOF it was judged on."""
    data, out = tmp_path / "data", tmp_path / "outputs"
    data.mkdir()
    labels.to_csv(data / schema.TRAIN_CSV, index=False)
    _write_experiment(out, "attention_smoke", two_models["a"], {"name": "attention"})
    _write_experiment(out, "resnet101_smoke", two_models["b"], {"name": "resnet101"})
    pd.DataFrame(list(fold_map(labels).items()), columns=["study_id", "fold"]).to_csv(out / "folds_5.csv", index=False)
    (out / "logs").mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data-dir", str(data), "--output-dir", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"| **{NESTED}** (chosen) | ensemble |" in proc.stdout
    assert (out / TABLE_MD).read_text() == proc.stdout
    table = pd.read_csv(out / TABLE_CSV)
    assert set(table.model) == {"attention_smoke", "resnet101_smoke", NESTED}
    spec = load_ensemble(out / SPEC_JSON)
    assert spec.models == ["attention_smoke", "resnet101_smoke"]
    assert spec.kinds == {"attention_smoke": "attention", "resnet101_smoke": "resnet101"}
    assert math.isclose(table.set_index("model").loc[NESTED, "score"], spec.nested_score["score"])
    nested = pd.read_csv(out / ensemble_oof_name(SPEC_JSON))
    assert official(labels, nested)["score"] == pytest.approx(spec.nested_score["score"], abs=1e-12)
    assert (out / "logs" / "04_ensemble.log").is_file()
