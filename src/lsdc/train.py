"""K-fold training on ROI crops, out-of-fold predictions and their scores.

One network serves all five conditions: it outputs ``5 x K`` logits and the crop's condition picks its
``K`` (K = 3 severities for the ``competition`` task, 2 for the paper's binary task). Each fold keeps its
best checkpoint (weights + everything needed to use them), an epoch log, metrics and wall time, and
resumes from its last checkpoint after an interruption.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import INDEX_CSV, CropConfig, load_crop
from lsdc.errors import ConfigError, DataError
from lsdc.io import atomic_path, write_csv, write_json
from lsdc.models import ModelConfig, count_parameters, create_model

log = logging.getLogger(__name__)

N_COND = len(schema.CONDITIONS)
COND_INDEX = {c: i for i, c in enumerate(schema.CONDITIONS)}
PAPER_CLASSES = ("normal_mild", "severe")
PRIOR_JSON = "prior.json"   # the training prior beside each experiment: inference falls back to it


@dataclass
class FoldConfig:
    n_folds: int = 5
    seed: int = 42
    train_folds: list[int] | None = None   # which folds to train (None: all)


@dataclass
class TrainConfig:
    task: Literal["competition", "paper"] = "competition"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3                       # paper: Adam, 1e-3
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    patience: int = 5                      # early stopping on the held-out fold's loss
    class_weights: tuple[float, float, float] = (1.0, 2.0, 4.0)   # competition task: as the metric
    augment: bool = True
    scale: tuple[float, float] = (0.8, 1.2)
    translate_px: int = 20                 # at 224 px; scaled with the crop size
    rotate_deg: float = 15.0
    vflip: float = 0.5
    lr_flip: float = 0.0                   # flip axial crops left-right AND swap left/right condition
    workers: int = 2
    device: str = "auto"                   # auto | cpu | cuda
    amp: bool = True                       # bfloat16 autocast on CUDA
    channels_last: bool = True
    seed: int = 42
    max_steps_per_epoch: int | None = None
    paper_level: str = "L4/L5"
    paper_moderate: Literal["drop", "severe"] = "drop"
    split: Literal["folds", "holdout"] = "folds"   # holdout: the paper's single 80:20 split (fold 0 held out)


@dataclass
class ExperimentConfig:
    """Everything one experiment needs; saved as config.yaml beside its outputs."""

    name: str = ""                         # experiment folder; default: model name (+ _paper) (+ _tag)
    tag: str = ""
    crops: CropConfig = field(default_factory=CropConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def experiment(self) -> str:
        if self.name:
            return self.name
        parts = [self.model.name.replace("/", "_")]
        if self.train.task == "paper":
            parts.append("paper")
        if self.tag:
            parts.append(self.tag)
        return "_".join(parts)

    @property
    def n_classes(self) -> int:
        return 3 if self.train.task == "competition" else 2


# ----------------------------------------------------------------------------- data


def training_table(cfg: ExperimentConfig, crops_dir: Path, folds: pd.DataFrame) -> pd.DataFrame:
    """Crops of the task with their integer target, condition index and fold."""
    path = crops_dir / INDEX_CSV
    if not path.is_file():
        raise DataError(f"{path} not found: run scripts/01_prepare_crops.py with the same crops settings")
    index = pd.read_csv(path, keep_default_na=False)
    index = index[index.label != ""].merge(folds, on="study_id", how="inner")
    if cfg.train.task == "competition":
        index["target"] = index.label.map(schema.SEVERITY_INDEX)
    else:
        index = index[index.level == cfg.train.paper_level]
        if cfg.train.paper_moderate == "drop":
            index = index[index.label != schema.SEVERITIES[1]]
        index["target"] = (index.label != schema.SEVERITIES[0]).astype(int)
    index["cond"] = index.condition.map(COND_INDEX)
    index["path"] = [str(crops_dir / p) for p in index.path]
    if index.empty:
        raise DataError(f"no labeled crops for task {cfg.train.task!r} in {path}")
    return index.reset_index(drop=True)


def lr_flip_condition(cond: int) -> int:
    """Condition index after a left-right flip of an axial crop: left <-> right subarticular."""
    info = schema.CONDITION_INFO[schema.CONDITIONS[cond]]
    if info.group != "subarticular":
        return cond
    other = "right" if info.side == "left" else "left"
    return COND_INDEX[schema.condition_for("subarticular", other)]


class CropDataset(Dataset):
    """ROI crops as (C, H, W) float tensors, standardised per channel, with paper augmentations.

    A left-right flip is applied only to axial (subarticular) crops and always swaps the left/right
    condition with it; sagittal crops are never flipped left-right (that would swap front and back).
    """

    def __init__(self, table: pd.DataFrame, n_slices: int, mean: np.ndarray, std: np.ndarray,
                 tcfg: TrainConfig | None = None, size: int = 224, seed: int = 0) -> None:
        self.paths = table.path.tolist()
        self.cond = table.cond.to_numpy()
        self.target = table.target.to_numpy()
        self.n_slices = n_slices
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.tcfg = tcfg
        self.rng = np.random.default_rng(seed)
        self.affine = None
        if tcfg is not None and tcfg.augment:
            import albumentations as A

            t = int(round(tcfg.translate_px * size / 224))
            self.affine = A.Affine(scale=tuple(tcfg.scale), translate_px={"x": (-t, t), "y": (-t, t)},
                                   rotate=(-tcfg.rotate_deg, tcfg.rotate_deg), border_mode=0, fill=0, p=1.0)
            self.affine.set_random_seed(seed)  # albumentations draws from its own generator: seed it too

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img = load_crop(self.paths[i], self.n_slices)
        cond = int(self.cond[i])
        if self.tcfg is not None and self.tcfg.augment:
            img, cond = self.augment(img, cond)
        x = (img.astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), cond, int(self.target[i])

    def augment(self, img: np.ndarray, cond: int) -> tuple[np.ndarray, int]:
        tcfg = self.tcfg
        assert tcfg is not None
        if self.affine is not None:
            img = self.affine(image=img)["image"]
        if self.rng.random() < tcfg.vflip:
            img = img[::-1]
        if tcfg.lr_flip > 0 and schema.CONDITION_INFO[schema.CONDITIONS[cond]].group == "subarticular" \
                and self.rng.random() < tcfg.lr_flip:
            img, cond = img[:, ::-1], lr_flip_condition(cond)
        return img, cond


def channel_stats(table: pd.DataFrame, n_slices: int, max_items: int = 512, seed: int = 0) -> tuple[list, list]:
    """Per-channel mean and std of (a sample of) the training crops, in [0, 1] units."""
    rng = np.random.default_rng(seed)
    paths = table.path.to_numpy()
    pick = paths if len(paths) <= max_items else rng.choice(paths, max_items, replace=False)
    arr = np.stack([load_crop(p, n_slices) for p in pick]).astype(np.float32) / 255.0
    mean = arr.mean(axis=(0, 1, 2))
    std = arr.std(axis=(0, 1, 2)) + 1e-6
    return mean.tolist(), std.tolist()


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.rng = np.random.default_rng(info.seed % 2**32)
        if info.dataset.affine is not None:
            info.dataset.affine.set_random_seed(info.seed % 2**32)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=False, worker_init_fn=_worker_init,
                      persistent_workers=False)


# ----------------------------------------------------------------------------- model step


def select_logits(logits: torch.Tensor, cond: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 5*K) logits and (B,) condition indices -> (B, K) logits of each crop's condition."""
    return logits.view(logits.shape[0], N_COND, k)[torch.arange(len(cond), device=logits.device), cond]


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged with per-class weights (sum w_i ce_i / sum w_i), as the metric does."""
    ce = nn.functional.cross_entropy(logits.float(), target, reduction="none")
    if weights is None:
        return ce.mean()
    w = weights[target]
    return (w * ce).sum() / w.sum()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _autocast(device: torch.device, enabled: bool) -> Any:
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, k: int, device: torch.device, amp: bool,
            channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities (N, K) of each crop's condition."""
    model.eval()
    out = []
    for x, cond, _ in loader:
        x = x.to(device, non_blocking=True)
        if channels_last and device.type == "cuda":
            x = x.to(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
        out.append(torch.softmax(select_logits(logits.float(), cond.to(device), k), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained model and its metadata (config, class order, normalisation) from a best.pt file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise DataError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    cfg = config_mod.from_dict(ExperimentConfig, payload["config"])
    mcfg = dataclasses.replace(cfg.model, num_classes=N_COND * cfg.n_classes, in_chans=cfg.crops.n_slices,
                               pretrained_path=None, backbone_pretrained_path=None)
    model = create_model(mcfg)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    payload["experiment_config"] = cfg
    return model, payload


# ----------------------------------------------------------------------------- one fold


def train_fold(cfg: ExperimentConfig, table: pd.DataFrame, fold: int, fold_dir: Path) -> dict[str, Any]:
    """Train on all folds but ``fold``, early-stop on ``fold``; resumes from ``fold_dir/last.pt``."""
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    k = cfg.n_classes
    torch.manual_seed(tcfg.seed + fold)
    train_t, val_t = table[table.fold != fold], table[table.fold == fold]
    if train_t.empty or val_t.empty:
        raise DataError(f"fold {fold}: {len(train_t)} training and {len(val_t)} held-out crops; need both")
    mean, std = channel_stats(train_t, cfg.crops.n_slices, seed=tcfg.seed)
    mcfg = dataclasses.replace(cfg.model, num_classes=N_COND * k, in_chans=cfg.crops.n_slices)
    model = create_model(mcfg).to(device)
    if tcfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt_cls = torch.optim.Adam if tcfg.optimizer == "adam" else torch.optim.AdamW
    opt = opt_cls(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    weights = torch.tensor(tcfg.class_weights[:k] if tcfg.task == "competition" else (1.0, 1.0), device=device)
    train_ds = CropDataset(train_t, cfg.crops.n_slices, mean, std, tcfg, cfg.crops.size, seed=tcfg.seed + fold)
    val_ds = CropDataset(val_t, cfg.crops.n_slices, mean, std, None)
    train_dl = make_loader(train_ds, tcfg.batch_size, True, tcfg.workers, device)
    val_dl = make_loader(val_ds, tcfg.batch_size * 2, False, tcfg.workers, device)

    meta = {"config": config_mod.to_dict(cfg), "classes": list(schema.SEVERITY_COLUMNS if k == 3 else PAPER_CLASSES),
            "conditions": list(schema.CONDITIONS), "mean": mean, "std": std, "fold": fold}
    state = {"epoch": 0, "best_loss": math.inf, "best_epoch": -1, "bad_epochs": 0, "wall": 0.0, "history": []}
    last = fold_dir / "last.pt"
    if last.is_file():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        log.info("fold %d: resuming after epoch %d", fold, state["epoch"])

    while state["epoch"] < tcfg.epochs and state["bad_epochs"] < tcfg.patience:
        t0 = time.perf_counter()
        model.train()
        losses, seen = [], 0
        for step, (x, cond, y) in enumerate(train_dl):
            if tcfg.max_steps_per_epoch is not None and step >= tcfg.max_steps_per_epoch:
                break
            x, cond, y = x.to(device, non_blocking=True), cond.to(device), y.to(device)
            if tcfg.channels_last and device.type == "cuda":
                x = x.to(memory_format=torch.channels_last)
            with _autocast(device, tcfg.amp):
                logits = model(x)
            loss = weighted_ce(select_logits(logits.float(), cond, k), y, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()) * len(y))
            seen += len(y)
        probs = predict(model, val_dl, k, device, tcfg.amp, tcfg.channels_last)
        val_loss = float(weighted_ce(torch.log(torch.from_numpy(probs).clamp_min(1e-15)),
                                     torch.as_tensor(val_t.target.to_numpy().copy()),
                                     weights.cpu()))
        val_acc = float((probs.argmax(1) == val_t.target.to_numpy()).mean())
        state["epoch"] += 1
        state["wall"] += time.perf_counter() - t0
        improved = val_loss < state["best_loss"] - 1e-6
        if improved:
            state.update(best_loss=val_loss, best_epoch=state["epoch"], bad_epochs=0)
            save_checkpoint(fold_dir / "best.pt", {**meta, "model": model.state_dict(), "epoch": state["epoch"],
                                                   "val_loss": val_loss})
        else:
            state["bad_epochs"] += 1
        state["history"].append({"epoch": state["epoch"], "train_loss": sum(losses) / max(seen, 1),
                                 "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - t0,
                                 "best": improved})
        write_csv(pd.DataFrame(state["history"]), fold_dir / "epochs.csv")
        save_checkpoint(last, {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state})
        log.info("fold %d epoch %d: train %.4f  val %.4f  acc %.3f%s", fold, state["epoch"],
                 state["history"][-1]["train_loss"], val_loss, val_acc, "  *" if improved else "")

    best_model, _ = load_checkpoint(fold_dir / "best.pt", device)
    probs = predict(best_model, val_dl, k, device, tcfg.amp)
    preds = val_t[["study_id", "condition", "level", "label", "target"]].copy()
    for j, name in enumerate(meta["classes"]):
        preds[name] = probs[:, j]
    write_csv(preds, fold_dir / "val_preds.csv")
    metrics = {"fold": fold, "best_epoch": state["best_epoch"], "best_val_loss": state["best_loss"],
               "epochs_run": state["epoch"], "train_seconds": state["wall"], "n_train": len(train_t),
               "n_val": len(val_t), "params": count_parameters(best_model), "device": str(device)}
    write_json(fold_dir / "metrics.json", metrics)
    last.unlink(missing_ok=True)
    return metrics


# ----------------------------------------------------------------------------- the experiment


def prior_probabilities(train: pd.DataFrame) -> dict[str, np.ndarray]:
    """Class frequencies per metric group in the training labels: the fallback prediction."""
    long = train.melt(id_vars="study_id", value_vars=list(schema.LABEL_COLUMNS), var_name="col", value_name="sev")
    long = long.dropna(subset=["sev"])
    out = {}
    for group in schema.GROUPS:
        sev = long[long.col.map(schema.group_of_column) == group].sev.map(schema.SEVERITY_INDEX)
        counts = np.bincount(sev, minlength=3).astype(float) + 1.0
        out[group] = counts / counts.sum()
    return out


def prior_submission(row_ids: list[str], prior: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each row gets its group's prior."""
    probs = np.array([prior[schema.group_of_column(r.split("_", 1)[1])] for r in row_ids])
    return pd.DataFrame({"row_id": row_ids, **{c: probs[:, j] for j, c in enumerate(schema.SEVERITY_COLUMNS)}})


def assemble_oof(preds: pd.DataFrame, train: pd.DataFrame, studies: set[int]) -> tuple[pd.DataFrame, int]:
    """Submission-format OOF: all 25 rows of every study in ``studies``.

    Crops predicted out of fold give their probabilities; every other row gets the training prior.
    Returns the frame and the number of labeled rows that fell back to the prior.
    """
    from lsdc.metric import solution_from_labels

    row_ids = [r for s in sorted(studies) for r in schema.study_row_ids(s)]
    oof = prior_submission(row_ids, prior_probabilities(train)).set_index("row_id")
    rid = [schema.row_id(s, c, lv) for s, c, lv in zip(preds.study_id, preds.condition, preds.level)]
    have = preds.assign(row_id=rid).set_index("row_id")[list(schema.SEVERITY_COLUMNS)]
    have = have[have.index.isin(oof.index)]
    oof.loc[have.index, list(schema.SEVERITY_COLUMNS)] = have.to_numpy()
    labeled = set(solution_from_labels(train[train.study_id.isin(studies)]).row_id)
    return oof.reset_index(), len(labeled - set(have.index))


def paper_metrics(preds: pd.DataFrame) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and AUC (severe = positive), overall and per condition."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    def one(df: pd.DataFrame) -> dict[str, float]:
        y, p = df.target.to_numpy(), df.severe.to_numpy()
        pred = (p >= 0.5).astype(int)
        return {"n": int(len(df)), "positives": int(y.sum()), "accuracy": float(accuracy_score(y, pred)),
                "precision": float(precision_score(y, pred, zero_division=0)),
                "recall": float(recall_score(y, pred, zero_division=0)),
                "f1": float(f1_score(y, pred, zero_division=0)),
                "auc": float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan")}

    return {"overall": one(preds), "per_condition": {c: one(g) for c, g in preds.groupby("condition")}}


def run(cfg: ExperimentConfig, data_dir: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Train every selected fold, then write the out-of-fold predictions and their scores."""
    from lsdc.folds import load_folds, load_train_labels
    from lsdc.metric import score, solution_from_labels

    cfg.crops.check()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    exp_dir = output_dir / cfg.experiment
    _check_same_config(cfg, exp_dir)
    config_mod.save(cfg, exp_dir / "config.yaml")
    folds = load_folds(output_dir, cfg.folds.n_folds)
    n_folds = int(folds.fold.nunique())
    table = training_table(cfg, output_dir / cfg.crops.dirname, folds)
    selected = cfg.folds.train_folds
    if cfg.train.split == "holdout":
        selected = [0]
    selected = list(range(n_folds)) if selected is None else list(selected)
    bad = [f for f in selected if f not in range(n_folds)]
    if bad:
        raise ConfigError(f"config key 'folds.train_folds': fold {bad[0]} does not exist (folds 0..{n_folds - 1})")
    log.info("experiment %s: %s task, %d crops, folds %s", cfg.experiment, cfg.train.task, len(table), selected)
    fold_metrics = []
    t0 = time.perf_counter()
    for fold in selected:
        fold_dir = exp_dir / f"fold{fold}"
        done = fold_dir / "metrics.json"
        if done.is_file() and (fold_dir / "val_preds.csv").is_file():
            log.info("fold %d already trained; kept", fold)
            fold_metrics.append(json.loads(done.read_text()))
            continue
        fold_metrics.append(train_fold(cfg, table, fold, fold_dir))
    preds = pd.concat([pd.read_csv(exp_dir / f"fold{f}" / "val_preds.csv") for f in selected], ignore_index=True)
    summary: dict[str, Any] = {"experiment": cfg.experiment, "task": cfg.train.task, "folds": selected,
                               "train_seconds": sum(m["train_seconds"] for m in fold_metrics),
                               "wall_seconds_this_run": time.perf_counter() - t0,
                               "params": fold_metrics[0]["params"], "fold_metrics": fold_metrics}
    train = load_train_labels(data_dir)
    write_json(exp_dir / PRIOR_JSON, {g: v.tolist() for g, v in prior_probabilities(train).items()})
    if cfg.train.task == "competition":
        studies = set(folds[folds.fold.isin(selected)].study_id)
        oof, n_prior = assemble_oof(preds, train, studies)
        write_csv(oof, exp_dir / "oof.csv")
        solution = solution_from_labels(train[train.study_id.isin(studies)])
        summary["oof_score"] = score(solution, oof)
        summary["prior_score"] = score(solution, prior_submission(oof.row_id.tolist(), prior_probabilities(train)))
        summary["rows_from_prior"] = n_prior
        log.info("%d labeled OOF rows had no crop and got the training prior", n_prior)
        log.info("OOF score %.4f (prior %.4f)", summary["oof_score"]["score"], summary["prior_score"]["score"])
    else:
        write_csv(preds, exp_dir / "oof_paper.csv")
        summary["paper_metrics"] = paper_metrics(preds)
        o = summary["paper_metrics"]["overall"]
        log.info("paper task: accuracy %.3f  F1 %.3f  AUC %.3f", o["accuracy"], o["f1"], o["auc"])
    write_json(exp_dir / "metrics.json", summary)
    return summary


def _check_same_config(cfg: ExperimentConfig, exp_dir: Path) -> None:
    """Resuming into a folder trained with other settings would mix two experiments: refuse."""
    path = exp_dir / "config.yaml"
    if not path.is_file():
        return
    old = config_mod.load(ExperimentConfig, path)
    keep = ("workers", "device", "epochs", "patience")
    a, b = config_mod.to_dict(old), config_mod.to_dict(cfg)
    for d in (a, b):
        for key in keep:
            d["train"].pop(key, None)
        d["folds"].pop("train_folds", None)
        d["crops"].pop("workers", None)
    if a != b:
        diff = [f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s] if a[s][k] != b.get(s, {}).get(k)]
        raise ConfigError(f"{exp_dir} holds an experiment with other settings ({', '.join(diff[:4]) or 'name'}); "
                          f"set another name (--set tag=...) or remove the folder")
