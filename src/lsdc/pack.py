"""The Kaggle pack: everything offline inference needs, in one folder to upload as a Kaggle dataset.

A pack holds the localiser, ``ensemble.json``, per experiment its config, prior, metrics and fold
checkpoints, a ``manifest.json`` naming them, and optionally the code (src/, scripts/, configs/), so a
notebook with internet off runs ``05_predict.py --weights-dir <pack>`` with no further settings.

Fold checkpoints can be stored in float16 (``half``): half the upload, and loading casts them back into
the float32 models inference runs (``load_state_dict`` copies into the model's own float32 tensors).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lsdc.ensemble import load_ensemble
from lsdc.errors import DataError
from lsdc.experiment import BEST_PT, CONFIG_YAML, METRICS_JSON, PRIOR_JSON
from lsdc.inference import MANIFEST_JSON, PredictConfig, localizer_folder
from lsdc.localize import LOCALIZER_PT

CODE_PARTS = ("src", "scripts", "configs")
FP16_MAX = float(torch.finfo(torch.float16).max)


def halve_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with its float32 tensors in float16; a tensor beyond float16's range stays float32
    (it would become inf), integer buffers (BatchNorm's counters) are untouched."""
    out = {}
    for key, t in state.items():
        fits = isinstance(t, torch.Tensor) and t.dtype == torch.float32 and (
            t.numel() == 0 or float(t.abs().max()) <= FP16_MAX)
        out[key] = t.half() if fits else t
    return out


def _copy_checkpoint(src: Path, dest: Path, half: bool) -> None:
    """A fold checkpoint as is, or with its model weights in float16."""
    if not half:
        shutil.copy2(src, dest)
        return
    payload = torch.load(src, map_location="cpu", weights_only=False)
    payload["model"] = halve_state(payload["model"])
    torch.save(payload, dest)


def _copy_localizer(src: Path, dest: Path, half: bool) -> None:
    """The localiser's folder (its final model and config, no per-fold models or CSVs), halved if asked."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.csv", "fold*", ".*"))
    if half:
        payload = torch.load(src / LOCALIZER_PT, map_location="cpu", weights_only=False)
        payload["models"] = {view: [halve_state(s) for s in states] for view, states in payload["models"].items()}
        torch.save(payload, dest / LOCALIZER_PT)


def pack(weights_dir: str | Path, out_dir: str | Path, cfg: PredictConfig, code_root: str | Path | None = None,
         half: bool = False, half_localizer: bool = False) -> Path:
    """Copy what 05_predict.py needs into ``out_dir`` (and the code from ``code_root`` if given).

    ``half`` stores the fold checkpoints in float16 (scripts/pack_kaggle.py does by default), and
    ``half_localizer`` the localiser too. Written to a temporary folder first and renamed, so a
    half-copied pack never looks complete.
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
    _copy_localizer(loc, tmp / loc.name, half_localizer)
    if spec_path.is_file():
        shutil.copy2(spec_path, tmp / cfg.ensemble)
    manifest: dict[str, Any] = {"experiments": {}, "localizer": loc.name,
                                "precision": {"checkpoints": "float16" if half else "float32",
                                              "localizer": "float16" if half_localizer else "float32"}}
    for name in names:
        folder = weights_dir / (spec.experiments.get(name, name) if spec else name)
        ckpts = sorted(folder.glob(f"fold*/{BEST_PT}"))
        if not ckpts:
            raise DataError(f"experiment {folder} has no fold*/{BEST_PT} to pack")
        dest = tmp / folder.name
        for f in [folder / CONFIG_YAML, folder / PRIOR_JSON, folder / METRICS_JSON]:
            if f.is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / f.name)
        for c in ckpts:
            (dest / c.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            _copy_checkpoint(c, dest / c.relative_to(folder), half)
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


def folder_size(folder: str | Path) -> int:
    """Bytes in the files under ``folder`` (what a Kaggle dataset upload weighs)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
