"""The Kaggle notebooks run headless: each executed with nbclient in the venv's own python3 kernel, its
parameter cell pointed at a small synthetic set. The training notebook trains a tiny pipeline, packs it, and
run again from that output (as the next Kaggle session would, attaching it) trains nothing; the inference
notebook on that pack writes 05_predict.py's submission byte for byte. The committed .ipynb files are the
jupytext sources converted (``jupytext --sync notebooks/*.py``), without outputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from lsdc import schema
from tiny import tiny_experiment, tiny_localizer

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("kaggle_inference", "kaggle_train")

TINY = tiny_experiment("nb", epochs=2, patience=2)
LOCALIZER = tiny_localizer("localizer_nb", epochs=1)
# A localiser trained one epoch on 8 studies leaves most recesses of the test study unplaced, which prediction
# would rightly stop on as systematic (max_failed_share); these tests check the notebooks, not the localiser.
TOLERANT = "max_failed_share=1.0"


def with_one_test_study(src: Path, dest: Path) -> Path:
    """``src``'s competition folder with its first test study only (the localiser runs on every slice of a
    test study, the costliest part of a prediction on CPU): CSVs filtered, image folders linked."""
    dest.mkdir(parents=True)
    keep = int(pd.read_csv(src / schema.TEST_SERIES_CSV).study_id.iloc[0])
    for f in src.iterdir():
        if f.name == schema.TRAIN_IMAGES:
            (dest / f.name).symlink_to(f, target_is_directory=True)
        elif f.is_file() and f.suffix == ".csv" and f.name.startswith(("test_", "sample_")):
            df = pd.read_csv(f)
            ids = df.study_id if "study_id" in df else df.row_id.str.split("_").str[0].astype(int)
            df[ids == keep].to_csv(dest / f.name, index=False)
        elif f.is_file():
            shutil.copy2(f, dest / f.name)
    (dest / schema.TEST_IMAGES).mkdir()
    (dest / schema.TEST_IMAGES / str(keep)).symlink_to(src / schema.TEST_IMAGES / str(keep), target_is_directory=True)
    return dest


def execute(name: str, params: dict, cwd: Path) -> nbformat.NotebookNode:
    """Execute a committed notebook with ``params`` assigned at the end of its parameter cell (the first),
    in the python3 kernel of this interpreter; returns the executed notebook (CellExecutionError on failure)."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    assigned = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    first.source += (f"\n# injected by tests/test_notebooks.py\n{assigned}\n"
                     f"import sys as _sys\nassert _sys.executable == {sys.executable!r}, _sys.executable\n")
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def text_output(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_its_jupytext_source_without_outputs(name):
    committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert cells(committed) == cells(source), f"run: jupytext --sync notebooks/{name}.py"
    assert cells(committed)[0][2] == ["parameters"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in committed.cells)
    assert committed.metadata.kernelspec.name == "python3"


@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory):
    """The training notebook run twice: session 1 from scratch, session 2 resuming from session 1's output."""
    root = tmp_path_factory.mktemp("kaggle_train")
    data = with_one_test_study(synthetic_dir, root / "data")
    (root / "tiny.yaml").write_text(TINY)
    (root / "loc.yaml").write_text(LOCALIZER)
    (root / "pipeline.yaml").write_text(f"experiments: [{{config: {root / 'tiny.yaml'}}}]\n"
                                        f"localizer: {{config: {root / 'loc.yaml'}}}\n")
    params = {"DATA_DIR": str(data), "CODE_DIR": str(ROOT), "CONFIG": str(root / "pipeline.yaml"),
              "TIME_LIMIT_HOURS": 0.25, "SETTINGS": [f"predict.{TOLERANT}"]}
    first = execute("kaggle_train", {**params, "OUT_DIR": str(root / "session1"), "PREVIOUS_DIR": "none"}, root)
    second = execute("kaggle_train", {**params, "OUT_DIR": str(root / "session2"),
                                      "PREVIOUS_DIR": str(root / "session1")}, root)
    return {"root": root, "data": data, "logs": [text_output(first), text_output(second)]}


def test_training_notebook_trains_packs_and_resumes_in_the_next_session(trained):
    s1, s2 = trained["root"] / "session1", trained["root"] / "session2"
    log1, log2 = trained["logs"]
    assert "pipeline finished" in log1 and "pipeline finished" in log2
    assert "copied" in log2 and "already trained; kept" in log2 and "localiser" in log2
    # Session 2 trained nothing: every checkpoint, epochs file and the localiser are session 1's, as copied.
    made = [p.relative_to(s1) for p in [*s1.glob("outputs/attention_nb/fold*/*"),
                                        *s1.glob("outputs/localizer_nb/*.pt")]]
    assert len([p for p in made if p.name == "best.pt"]) == 2 and any(p.name == "localizer.pt" for p in made)
    for rel in made:
        assert (s2 / rel).stat().st_mtime_ns == (s1 / rel).stat().st_mtime_ns, rel
    sub = "outputs/submission.csv"
    assert (s2 / sub).read_bytes() == (s1 / sub).read_bytes()
    # Each session packed the weights, half precision by default; the run's pictures are drawn.
    for s in (s1, s2):
        manifest = (s / "kaggle_dataset" / "manifest.json").read_text()
        assert '"checkpoints": "float16"' in manifest
        assert (s / "outputs/attention_nb/curves.png").stat().st_size > 10_000
        assert (s / "outputs/oof_chart.png").stat().st_size > 10_000


def test_inference_notebook_writes_05_predicts_submission_byte_for_byte(trained, tmp_path):
    pack = trained["root"] / "session1" / "kaggle_dataset"
    script = tmp_path / "script" / "submission.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "05_predict.py"), "--data-dir", str(trained["data"]),
                    "--weights-dir", str(pack), "--output-dir", str(tmp_path / "script"), "--submission", str(script),
                    "--set", TOLERANT],
                   check=True, cwd=tmp_path, capture_output=True)
    out = tmp_path / "working"
    nb = execute("kaggle_inference", {"DATA_DIR": str(trained["data"]), "WEIGHTS_DIR": str(pack),
                                      "OUT_DIR": str(out), "SETTINGS": [TOLERANT]}, tmp_path)
    assert (out / "submission.csv").read_bytes() == script.read_bytes()
    text = text_output(nb)
    assert f"lsdc from {pack / 'code' / 'src' / 'lsdc'}" in text       # the pack's code, not the installed one
    assert "0 without any model prediction" in text
