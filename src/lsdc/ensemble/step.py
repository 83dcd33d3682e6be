"""The ensemble step (scripts/04_ensemble.py): find the experiments, choose and fit the ensemble out of fold,
write the comparison table, the spec and the ensemble's out-of-fold predictions."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lsdc.ensemble.frames import align_oofs, read_oof
from lsdc.ensemble.select import fit_ensemble
from lsdc.ensemble.spec import SPEC_JSON, SPEC_VERSION, UNKNOWN_KIND, EnsembleSpec, load_ensemble, save_ensemble
from lsdc.ensemble.table import NESTED, comparison_table, table_markdown
from lsdc.errors import ConfigError, DataError
from lsdc.experiment import CONFIG_YAML, OOF_CSV, load_experiment_config
from lsdc.folds import folds_csv
from lsdc.io import write_csv, write_text
from lsdc.models import ATTENTION
from lsdc.stamps import digest, file_state, is_current, write_stamp

log = logging.getLogger(__name__)

TABLE_CSV = "oof_table.csv"
TABLE_MD = "oof_table.md"
TABLE_FORMAT = 2                   # bump when the table's columns change, so kept tables are written again
ABLATION_KIND = "ablation"         # the attention model with one of its components switched off


@dataclass
class EnsembleConfig:
    """Settings of scripts/04_ensemble.py (``--config``/``--set`` keys)."""

    experiments: list[str] | None = None   # experiment folders to consider; None: every one with an oof.csv
    temperature: bool = True               # fit one temperature per group (False: T = 1)
    min_weight: float = 1e-3               # fitted weights below this become 0 (then renormalised)
    # The OOF each experiment is fitted on: oof.csv (crops at annotated points) or oof_localized.csv
    # (crops at held-out localiser points, from scripts/07_localized_oof.py: what test rows see).
    oof_file: str = OOF_CSV
    spec_file: str = SPEC_JSON             # where the chosen spec goes (05_predict.py reads ensemble.json)

    def check(self) -> None:
        if not 0.0 <= self.min_weight < 0.5:
            raise ConfigError(f"config key 'min_weight': {self.min_weight} is not in [0, 0.5)")
        if self.experiments is not None and not self.experiments:
            raise ConfigError("config key 'experiments': the list is empty")
        if not self.oof_file.endswith(".csv") or "/" in self.oof_file:
            raise ConfigError(f"config key 'oof_file': {self.oof_file!r} is not a CSV file name")
        if not self.spec_file.endswith(".json") or "/" in self.spec_file:
            raise ConfigError(f"config key 'spec_file': {self.spec_file!r} is not a JSON file name")


def discover_experiments(output_dir: str | os.PathLike, oof_file: str = OOF_CSV) -> dict[str, Path]:
    """Experiment name -> path of its ``oof_file``, for every ``output_dir/<name>/<oof_file>`` (sorted by name).

    Folders without one (crops, logs, paper-task or unfinished experiments) are skipped and logged.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise DataError(f"output folder {output_dir} does not exist")
    found: dict[str, Path] = {}
    skipped: list[str] = []
    for sub in sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        oof = sub / oof_file
        if oof.is_file():
            found[sub.name] = oof
        else:
            skipped.append(sub.name)
    if skipped:
        log.info("skipped %d folder(s) without %s in %s: %s", len(skipped), oof_file, output_dir, ", ".join(skipped))
    log.info("found %d experiment(s) in %s: %s", len(found), output_dir, ", ".join(found) or "none")
    return found


def experiment_kind(exp_dir: str | os.PathLike) -> str:
    """The model kind of an experiment from its config.yaml: the model name, or ``ablation`` for the
    attention model with an attention branch switched off."""
    try:
        model = load_experiment_config(exp_dir).model
    except DataError as exc:
        log.warning("%s (kind %r)", exc, UNKNOWN_KIND)
        return UNKNOWN_KIND
    if model.name == ATTENTION and model.attention.branches_off:
        return ABLATION_KIND
    return model.name


def table_names(oof_file: str) -> tuple[str, str]:
    """The comparison table's CSV and markdown names for an OOF file: oof_table.* for oof.csv,
    oof_localized_table.* for oof_localized.csv, so both tables can sit side by side."""
    if oof_file == OOF_CSV:
        return TABLE_CSV, TABLE_MD
    stem = Path(oof_file).stem
    return f"{stem}_table.csv", f"{stem}_table.md"


def ensemble_oof_name(spec_file: str) -> str:
    """Where the shipped ensemble's out-of-fold predictions go: ensemble_oof.csv beside ensemble.json."""
    return f"{Path(spec_file).stem}_oof.csv"


def build_ensemble(
    output_dir: str | os.PathLike, train_labels: pd.DataFrame, cfg: EnsembleConfig | None = None,
) -> tuple[pd.DataFrame, EnsembleSpec]:
    """Discover experiments, choose and fit the ensemble, write its table (see :func:`table_names`), the spec
    (``cfg.spec_file``) and the ensemble's out-of-fold predictions (:func:`ensemble_oof_name`) into
    ``output_dir``. A spec made from the same OOF files, folds, labels and settings is reused."""
    cfg = cfg or EnsembleConfig()
    cfg.check()
    output_dir = Path(output_dir)
    found = discover_experiments(output_dir, cfg.oof_file)
    if not found:
        hint = "scripts/02_train.py" if cfg.oof_file == OOF_CSV else "scripts/07_localized_oof.py"
        raise DataError(f"{output_dir}: no experiment folder holds an {cfg.oof_file}; run {hint} first")
    names = list(cfg.experiments) if cfg.experiments is not None else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ConfigError(f"experiment(s) {unknown} have no {cfg.oof_file} in {output_dir}; found: {list(found)}")
    table_csv, table_md = table_names(cfg.oof_file)
    spec_path = output_dir / cfg.spec_file
    folds_path = _shared_folds(output_dir, [found[n].parent for n in names])
    inputs = {"version": SPEC_VERSION, "table": TABLE_FORMAT, "config": dataclasses.asdict(cfg),
              "oofs": {n: file_state(found[n]) for n in names},
              "configs": {n: file_state(found[n].parent / CONFIG_YAML) for n in names},
              "folds": file_state(folds_path) if folds_path else None,
              "labels": digest(train_labels.to_csv(index=False))}
    if is_current(spec_path, inputs) and all((output_dir / f).is_file()
                                             for f in (table_csv, table_md, ensemble_oof_name(cfg.spec_file))):
        log.info("%s is up to date (same OOF, folds, labels and settings)", spec_path)
        return pd.read_csv(output_dir / table_csv), load_ensemble(spec_path)
    oofs = align_oofs({n: read_oof(found[n]) for n in names})
    kinds = {n: experiment_kind(found[n].parent) for n in names}
    folds = None
    if folds_path is not None:
        f = pd.read_csv(folds_path)
        folds = dict(zip(f.study_id.astype(int), f.fold.astype(int)))
    fit = fit_ensemble(oofs, train_labels, temperature=cfg.temperature, min_weight=cfg.min_weight,
                       kinds=kinds, experiments={n: found[n].parent.name for n in names}, folds=folds)
    spec = fit.spec
    table = comparison_table(oofs, train_labels, ensemble=fit.oof if fit.fitted else None, kinds=kinds,
                             chosen=NESTED if fit.fitted else spec.models[0])
    write_csv(table, output_dir / table_csv)
    write_text(output_dir / table_md, table_markdown(table))
    write_csv(fit.oof, output_dir / ensemble_oof_name(cfg.spec_file))
    save_ensemble(spec, spec_path)
    write_stamp(spec_path, inputs)
    log.info("wrote %s, %s, %s and %s in %s", table_csv, table_md, ensemble_oof_name(cfg.spec_file),
             cfg.spec_file, output_dir)
    return table, spec


def _shared_folds(output_dir: Path, exp_dirs: list[Path]) -> Path | None:
    """The folds file the experiments were trained on (for the out-of-fold choice of the ensemble); None
    when they name different fold counts or the file is missing."""
    counts = set()
    for d in exp_dirs:
        try:
            counts.add(load_experiment_config(d).folds.n_folds)
        except DataError:
            return None
    path = output_dir / folds_csv(counts.pop()) if len(counts) == 1 else None
    if path is None or not path.is_file():
        log.warning("no shared folds file for the experiments: nothing can be judged out of fold, so the best "
                    "single model is shipped")
        return None
    return path
