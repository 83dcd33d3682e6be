"""The trained localiser: each view's fold models, placing every (condition, level) of a new study."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsdc import config as config_mod
from lsdc import schema
from lsdc.crops import CropRequest
from lsdc.dicom import Series
from lsdc.errors import DataError, NonFiniteOutput
from lsdc.geometry import pixel_to_patient
from lsdc.io import atomic_path
from lsdc.localize.config import LOCALIZER_PT, LocalizerConfig
from lsdc.localize.heatmaps import decode, slice_scores
from lsdc.localize.stack import Stack, view_stack
from lsdc.localize.targets import axial_candidates, axial_prior
from lsdc.localize.views import (
    CANAL,
    CANAL_ROI,
    FORAMEN,
    NO_SERIES,
    NOT_PLACED,
    RECESS,
    SERIES_UNREADABLE,
    SIDES,
    SPINAL,
    VIEW_SERIES,
    VIEWS,
    Unplaced,
    View,
    group_cells,
    view_series,
)
from lsdc.models import KeypointNet

log = logging.getLogger(__name__)


@dataclass
class Localizer:
    """Each view's fold models (their logits averaged): everything needed to localise a new study."""

    models: dict[str, list[KeypointNet]]
    cfg: LocalizerConfig

    @torch.no_grad()
    def run(self, view: View, stack: Stack) -> np.ndarray:
        """(n, C, h, w) logits of a view's detector on every slice of a stack (mean over fold models).

        NonFiniteOutput when they are not all finite: broken weights would place every point at random."""
        models = self.models[view.name]
        x = torch.from_numpy(stack.inputs(list(range(len(stack))))).to(next(models[0].parameters()).device)
        logits = torch.stack([m(x) for m in models]).mean(0)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteOutput(f"the localiser's {view.name} detector gave non-finite outputs on "
                                  f"{stack.series.name}: its weights are broken; train it again with "
                                  "scripts/03_train_localizer.py")
        return logits.cpu().numpy()

    def locate(self, found: dict[str, list[Series]]) -> tuple[list[CropRequest], dict[str, Any]]:
        """Crop requests for every (condition, level) that could be placed, and what was found: the canal
        points in patient space, the views that could not run (``missing``) and, for every cell without a
        request, why (``unplaced``: (condition, level) -> :class:`Unplaced`).

        A series whose pixels cannot be read (DataError) loses its own view's cells only."""
        requests: list[CropRequest] = []
        unplaced: dict[tuple[str, str], Unplaced] = {}
        info: dict[str, Any] = {"canal_points": None, "missing": [], "unplaced": unplaced}
        canal_series = view_series(CANAL, found)
        if not canal_series:
            info["missing"].append("no sagittal series: no level can be placed")
            unplaced.update(dict.fromkeys(group_cells(schema.GROUPS), Unplaced(
                NO_SERIES, "no sagittal series: no level can be placed", VIEW_SERIES[CANAL.name])))
            return requests, info
        try:
            stack = Stack(canal_series[0], self.cfg.image_size, self.cfg.stride)
            canal, j, pixels = self._canal(CANAL, stack)
            if CANAL_ROI.name in self.models:
                stack = view_stack(CANAL_ROI, canal_series[0], canal, self.cfg)
                canal, j, pixels = self._canal(CANAL_ROI, stack)
        except DataError as exc:
            info["missing"].append(f"sagittal series unreadable: no level can be placed ({exc})")
            unplaced.update(dict.fromkeys(group_cells(schema.GROUPS), Unplaced(
                SERIES_UNREADABLE, f"{canal_series[0].description} {canal_series[0].name}: {exc}")))
            return requests, info
        for level, lv in enumerate(schema.LEVELS):
            requests.append(self._request(SPINAL, lv, stack, j, *pixels[level]))
        info["canal_points"] = canal
        for view, place in ((FORAMEN, self._foramina), (RECESS, self._recesses)):
            chosen = view_series(view, found)
            cells = group_cells([view.group])
            if not chosen:
                what = f"no {' or '.join(VIEW_SERIES[view.name])}: no {view.group} point placed"
                info["missing"].append(what)
                unplaced.update(dict.fromkeys(cells, Unplaced(NO_SERIES, what, VIEW_SERIES[view.name])))
                continue
            try:
                placed, why = place(chosen, canal)
            except DataError as exc:
                info["missing"].append(f"{view.group} series unreadable: no {view.group} point placed ({exc})")
                unplaced.update(dict.fromkeys(cells, Unplaced(SERIES_UNREADABLE, str(exc))))
                continue
            requests.extend(placed)
            unplaced.update({cell: Unplaced(NOT_PLACED, text) for cell, text in why.items()})
        return requests, info

    def _foramina(self, t1: list[Series], canal: np.ndarray
                  ) -> tuple[list[CropRequest], dict[tuple[str, str], str]]:
        """Each foramen on the first Sagittal T1: the best slice on its side of the level's canal point;
        a side without any slice is left out, with the reason."""
        requests, why = [], {}
        t1_stack = view_stack(FORAMEN, t1[0], canal, self.cfg)
        logits = self.run(FORAMEN, t1_stack)
        scores = slice_scores(torch.from_numpy(logits)).numpy()
        for level, lv in enumerate(schema.LEVELS):
            lateral = t1_stack.lateral(canal[level])
            for side, sign in (("left", 1.0), ("right", -1.0)):
                condition = schema.condition_for("foraminal", side)
                cands = np.flatnonzero(sign * lateral > 0)
                if not len(cands):
                    why[(condition, lv)] = f"no Sagittal T1 slice on the {side} of the {lv} canal point"
                    continue
                j = int(cands[np.argmax(scores[cands, level])])
                x, y = t1_stack.to_pixels(j, *decode(logits[j, level:level + 1])[0])
                requests.append(self._request(condition, lv, t1_stack, j, x, y))
        return requests, why

    def _recesses(self, axial: list[Series], canal: np.ndarray
                  ) -> tuple[list[CropRequest], dict[tuple[str, str], str]]:
        """Each recess over every Axial T2 series: the best candidate slice near its level's canal point; a
        level without a candidate slice is left out, with the reason."""
        requests, why = [], {}
        stacks = [view_stack(RECESS, s, canal, self.cfg) for s in axial]
        logits = [self.run(RECESS, s) for s in stacks]
        scores = [slice_scores(torch.from_numpy(lg)).numpy() for lg in logits]
        for level, lv in enumerate(schema.LEVELS):
            cands = axial_candidates(stacks, canal[level], self.cfg.axial_window_mm)
            prior = axial_prior(stacks, cands, canal[level], self.cfg.axial_prior_mm) or [0.0] * len(cands)
            for channel, side in enumerate(SIDES):
                condition = schema.condition_for("subarticular", side)
                if not cands:
                    why[(condition, lv)] = (f"no Axial T2 slice within {self.cfg.axial_window_mm:g} mm of the "
                                            f"{lv} canal point")
                    continue
                best = int(np.argmax([scores[k][j, channel] + p for (k, j), p in zip(cands, prior)]))
                k, j = cands[best]
                x, y = stacks[k].to_pixels(j, *decode(logits[k][j, channel:channel + 1])[0])
                requests.append(self._request(condition, lv, stacks[k], j, x, y))
        return requests, why

    def _canal(self, view: View, stack: Stack) -> tuple[np.ndarray, int, list[tuple[float, float]]]:
        """The canal's five level points (patient space), the slice they share and their pixels there."""
        logits = self.run(view, stack)
        scores = torch.log_softmax(slice_scores(torch.from_numpy(logits)), 0).numpy()   # (n, 5)
        j = int(np.argmax(scores.sum(1)))
        pixels = [stack.to_pixels(j, *cell) for cell in decode(logits[j])]
        canal = np.array([pixel_to_patient(stack.series.slices[j].geometry, x, y) for x, y in pixels])
        return canal, j, pixels

    @staticmethod
    def _request(condition: str, level: str, stack: Stack, j: int, x: float, y: float) -> CropRequest:
        return CropRequest(condition, level, int(stack.series.series_id), stack.series.slices[j].instance_number,
                           float(x), float(y))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / LOCALIZER_PT) as tmp:
            torch.save({"models": {v: [m.state_dict() for m in ms] for v, ms in self.models.items()},
                        "config": config_mod.to_dict(self.cfg)}, tmp)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Localizer:
        """The saved localiser, its networks in float32 on ``device`` (a half-precision pack is cast back)."""
        path = Path(folder) / LOCALIZER_PT
        if not path.is_file():
            raise DataError(f"{path} not found: run scripts/03_train_localizer.py first")
        try:
            payload = torch.load(path, map_location=device, weights_only=False)
            cfg = config_mod.from_dict(LocalizerConfig, payload["config"])
            channels = {v.name: v.channels for v in VIEWS}
            models = {}
            for view, states in payload["models"].items():
                models[view] = []
                for sd in states:
                    m = KeypointNet(3, channels[view], cfg.width, cfg.stride)
                    m.load_state_dict(sd)
                    models[view].append(m.to(device).eval())
        except Exception as exc:
            raise DataError(f"{path} is not a localiser of this version ({type(exc).__name__}: {exc}); "
                            "train it again with scripts/03_train_localizer.py") from exc
        return cls(models, cfg)


def find_localizer(folder: Path, name: str = "") -> Path:
    """A trained localiser's folder under ``folder``: ``name`` when given, else the only one there.
    DataError when it is missing, or there are several to choose from (the message lists them)."""
    found = trained_localizers(folder)
    if name:
        if not (folder / name / LOCALIZER_PT).is_file():
            raise DataError(f"{folder / name / LOCALIZER_PT} not found: run scripts/03_train_localizer.py "
                            f"(localisers in {folder}: {', '.join(found) or 'none'})")
        return folder / name
    if len(found) != 1:
        raise DataError(f"{'several' if found else 'no'} trained localiser(s) in {folder}"
                        + (f" ({', '.join(found)}): choose one with --set localizer=NAME" if found
                           else ": run scripts/03_train_localizer.py"))
    log.info("localiser: %s", folder / found[0])
    return folder / found[0]


def trained_localizers(folder: Path) -> list[str]:
    """Folders under ``folder`` holding a trained localiser."""
    if not folder.is_dir():
        return []
    return sorted(d.name for d in folder.iterdir() if (d / LOCALIZER_PT).is_file())
