"""Training one view's detector: the slices a step runs, augmentation, the loop."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from lsdc import schema
from lsdc.data import images_dir, load_study_series
from lsdc.localize.config import LocalizerConfig
from lsdc.localize.heatmaps import heatmap_loss, slice_scores
from lsdc.localize.stack import Stack, view_stack
from lsdc.localize.targets import StudyPoints, Target, ViewSample, view_targets
from lsdc.localize.views import CANAL, CANAL_ROI, View, view_series
from lsdc.models import KeypointNet

log = logging.getLogger(__name__)


def augment_sample(x: np.ndarray, cells: list[tuple[float, float]], stride: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One random rotation/scale/shift and intensity change for all slices of a sample, points moved along."""
    size = x.shape[-1]
    m = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), rng.uniform(-8, 8), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.06, 0.06, 2) * size
    flat = x.reshape(-1, size, size)
    out = np.stack([cv2.warpAffine(c, m, (size, size), flags=cv2.INTER_LINEAR) for c in flat]).reshape(x.shape)
    out = np.clip(out * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, out.shape).astype(np.float32), 0, 1)
    moved = []
    for u, v in cells:
        px = np.array([(u + 0.5) * stride - 0.5, (v + 0.5) * stride - 0.5, 1.0])
        qx, qy = m @ px
        moved.append(((qx + 0.5) / stride - 0.5, (qy + 0.5) / stride - 0.5))
    return out.astype(np.float32), moved


def forward_set(targets: list[Target], stacks: list[Stack], cfg: LocalizerConfig,
                 rng: np.random.Generator) -> dict[int, list[int]]:
    """Per stack, the slices a training step runs: every point's slice, its neighbours, a few others, and
    (axial) every candidate."""
    chosen: dict[int, set[int]] = {}
    for t in targets:
        n = len(stacks[t.stack])
        chosen.setdefault(t.stack, set()).update(
            range(max(0, t.index - cfg.context_slices), min(n, t.index + cfg.context_slices + 1)))
        if len(t.candidates) <= 2 * cfg.context_slices + 1 + cfg.random_slices:
            for k, j in t.candidates:
                chosen.setdefault(k, set()).add(j)
    for k, js in chosen.items():
        n = len(stacks[k])
        rest = sorted(set(range(n)) - js)
        if rest:
            js.update(rng.choice(rest, min(cfg.random_slices, len(rest)), replace=False).tolist())
    return {k: sorted(js) for k, js in chosen.items()}


def fit_view(view: View, samples: list[ViewSample], cfg: LocalizerConfig, device: torch.device) -> KeypointNet:
    """Train one view's detector on its training studies (one study per optimiser step)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = KeypointNet(3, view.channels, cfg.width, cfg.stride).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    for epoch in range(cfg.epochs):
        model.train()
        total, steps = 0.0, 0
        for i in rng.permutation(len(samples)):
            sample = samples[i]
            targets = view_targets(view, sample, cfg, rng)
            if not targets:
                continue
            run = forward_set(targets, sample.stacks, cfg, rng)
            order = [(k, j) for k in sorted(run) for j in run[k]]
            pos = {kj: n for n, kj in enumerate(order)}
            x = np.concatenate([sample.stacks[k].inputs(run[k]) for k in sorted(run)])
            cells = [t.cell for t in targets]
            if cfg.augment:
                x, cells = augment_sample(x, cells, cfg.stride, rng)
            logits = model(torch.from_numpy(x).to(device))
            scores = slice_scores(logits)
            slice_loss = []
            for t in targets:
                kept = [n for n, c in enumerate(t.candidates) if c in pos]
                cand = [pos[t.candidates[n]] for n in kept]
                logit = scores[cand, t.channel]
                if t.prior is not None:
                    logit = logit + torch.tensor([t.prior[n] for n in kept], device=device)
                own = cand.index(pos[(t.stack, t.index)])
                slice_loss.append(-torch.log_softmax(logit, 0)[own])
            maps = torch.stack([logits[pos[(t.stack, t.index)], t.channel] for t in targets])
            where = torch.tensor(cells, dtype=torch.float32, device=device)
            loss = torch.stack(slice_loss).mean() + heatmap_loss(maps, where, cfg.sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        sched.step()
        if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
            log.info("%s detector epoch %d: loss %.4f (%d studies)", view.name, epoch + 1, total / max(steps, 1),
                     steps)
    return model.cpu().eval()


def view_samples(view: View, data_dir: Path, points: dict[int, StudyPoints], series: pd.DataFrame,
                 cfg: LocalizerConfig) -> list[ViewSample]:
    """Each annotated study's stacks of one view (decoded once; the canal view also trains on Sagittal T1)."""
    out = []
    for sid, sp in points.items():
        found = load_study_series(images_dir(data_dir, "train") / str(sid), series[series.study_id == sid])
        lists = [view_series(view, found)]
        if view in (CANAL, CANAL_ROI) and found.get(schema.SAG_T2) and found.get(schema.SAG_T1):
            lists.append(found[schema.SAG_T1][:1])   # the canal is found on T1 when a study lacks T2
        for chosen in lists:
            if chosen:
                out.append(ViewSample([view_stack(view, s, sp.canal, cfg, keep_pixels=False) for s in chosen], sp))
    return out
