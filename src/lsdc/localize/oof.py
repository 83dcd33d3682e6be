"""The localiser judged out of fold: each held-out cell's error and slice, and their summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsdc import schema
from lsdc.data import images_dir, load_study_series
from lsdc.localize.config import OOF_POINT_COLUMNS
from lsdc.localize.localizer import Localizer
from lsdc.localize.targets import StudyPoints
from lsdc.localize.views import N_LEVELS


def evaluate(localizer: Localizer, data_dir: Path, points: dict[int, StudyPoints], series: pd.DataFrame,
             studies: list[int]) -> pd.DataFrame:
    """Per cell of each study: the crop request the localiser made, and, for annotated cells, the error
    in mm of the predicted point and whether its slice (series and instance) is the annotated one."""
    rows = []
    for sid in studies:
        sp = points.get(sid, StudyPoints(sid, np.full((N_LEVELS, 3), np.nan), {}, {}))
        found = load_study_series(images_dir(data_dir, "train") / str(sid), series[series.study_id == sid])
        requests, _ = localizer.locate(found)
        by_id = {int(s.series_id): s for lst in found.values() for s in lst}
        for r in requests:
            key = (r.condition, r.level)
            row = {"study_id": sid, "condition": r.condition, "level": r.level, "annotated": key in sp.points,
                   "error_mm": np.nan, "slice_correct": np.nan, "series_id": r.series_id,
                   "instance_number": r.instance_number, "x": r.x, "y": r.y}
            if key in sp.points:
                s = by_id[r.series_id]
                pred = s.pixel_to_patient(s.index_of_instance(r.instance_number), r.x, r.y)
                true_series, true_inst = sp.instances[key]
                row.update(error_mm=float(np.linalg.norm(pred - sp.points[key])),
                           slice_correct=bool(r.series_id == true_series and r.instance_number == true_inst))
            rows.append(row)
        for key in set(sp.points) - {(r.condition, r.level) for r in requests}:
            rows.append({"study_id": sid, "condition": key[0], "level": key[1], "annotated": True,
                         "error_mm": np.nan, "slice_correct": False})
        for lst in found.values():
            for s in lst:
                s.clear_cache()
    return pd.DataFrame(rows, columns=list(OOF_POINT_COLUMNS))


def localizer_metrics(oof: pd.DataFrame) -> dict[str, Any]:
    """Median and mean error (mm), share within 10 mm, slice accuracy and share located, over the
    annotated cells: all of them, per metric group and per condition."""
    ann = oof[oof.annotated.astype(bool)]

    def one(g: pd.DataFrame) -> dict[str, float]:
        return {"median_error_mm": float(g.error_mm.median()), "mean_error_mm": float(g.error_mm.mean()),
                "within_10mm": float((g.error_mm < 10).mean()),
                "slice_accuracy": float(g.slice_correct.astype(bool).mean()),
                "located": float(g.error_mm.notna().mean()), "n": int(len(g))}

    groups = ann.condition.map(lambda c: schema.CONDITION_INFO[c].group)
    return {"n_points": int(len(ann)), **one(ann),
            "per_group": {g: one(ann[groups == g]) for g in schema.GROUPS if (groups == g).any()},
            "per_condition": {c: one(g) for c, g in ann.groupby("condition")}}
