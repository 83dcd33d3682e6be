"""The Kaggle pack: everything offline inference needs, in one folder to upload as a Kaggle dataset.

A pack holds the localiser, ``ensemble.json``, per experiment its config, prior, metrics and fold
checkpoints, a ``manifest.json`` naming them, and optionally the code (src/, scripts/, configs/), so a
notebook with internet off runs ``05_predict.py --weights-dir <pack>`` with no further settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lsdc.ensemble import load_ensemble
from lsdc.errors import DataError
from lsdc.experiment import BEST_PT, CONFIG_YAML, METRICS_JSON, PRIOR_JSON
from lsdc.inference import MANIFEST_JSON, PredictConfig, localizer_folder

CODE_PARTS = ("src", "scripts", "configs")


def pack(weights_dir: str | Path, out_dir: str | Path, cfg: PredictConfig, code_root: str | Path | None = None) -> Path:
    """Copy what 05_predict.py needs into ``out_dir`` (and the code from ``code_root`` if given).

    Written to a temporary folder first and renamed, so a half-copied pack never looks complete.
    """
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    spec_path = weights_dir / cfg.ensemble
    spec = load_ensemble(spec_path) if spec_path.is_file() else None
    names = cfg.experiments or (spec.models if spec else [])
    if not names:
        raise DataError(f"{spec_path} not found and no experiments given: nothing to pack")
    loc = localizer_folder(weights_dir, cfg.localizer)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copytree(loc, tmp / loc.name, ignore=shutil.ignore_patterns("*.csv", "fold*", ".*"))
    if spec_path.is_file():
        shutil.copy2(spec_path, tmp / cfg.ensemble)
    manifest: dict[str, Any] = {"experiments": {}, "localizer": loc.name}
    for name in names:
        folder = weights_dir / (spec.experiments.get(name, name) if spec else name)
        ckpts = sorted(folder.glob(f"fold*/{BEST_PT}"))
        if not ckpts:
            raise DataError(f"experiment {folder} has no fold*/{BEST_PT} to pack")
        dest = tmp / folder.name
        for f in [folder / CONFIG_YAML, folder / PRIOR_JSON, folder / METRICS_JSON, *ckpts]:
            if f.is_file():
                (dest / f.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / f.relative_to(folder))
        manifest["experiments"][name] = [str(c.relative_to(weights_dir)) for c in ckpts]
    if code_root is not None:
        for part in CODE_PARTS:
            shutil.copytree(Path(code_root) / part, tmp / "code" / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tmp / MANIFEST_JSON).write_text(json.dumps(manifest, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
