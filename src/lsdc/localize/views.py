"""The detectors (views): which group each places, on which series, and why a cell may get no point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lsdc import schema
from lsdc.dicom import Series

SPINAL = schema.condition_for("spinal")
N_LEVELS = len(schema.LEVELS)


@dataclass(frozen=True)
class View:
    """One detector: the metric group it places and its number of output channels."""

    name: str
    group: str
    channels: int


CANAL = View("canal", "spinal", N_LEVELS)          # the whole sagittal image: which vertebra is which
CANAL_ROI = View("canal_roi", "spinal", N_LEVELS)  # a square around the first estimate: where exactly
FORAMEN = View("foramen", "foraminal", N_LEVELS)
RECESS = View("recess", "subarticular", 2)         # channel 0: left recess, 1: right
VIEWS = (CANAL, CANAL_ROI, FORAMEN, RECESS)
SIDES = ("left", "right")
# The series each view runs on (any one of them; the canal view prefers the first).
VIEW_SERIES: dict[str, tuple[str, ...]] = {CANAL.name: (schema.SAG_T2, schema.SAG_T1),
                                           CANAL_ROI.name: (schema.SAG_T2, schema.SAG_T1),
                                           FORAMEN.name: (schema.SAG_T1,), RECESS.name: (schema.AXIAL_T2,)}

# Why a cell got no point (Localizer.locate's info["unplaced"]), for the prediction report.
NO_SERIES = "no_series"                  # the study has no usable series of the view's descriptions
SERIES_UNREADABLE = "series_unreadable"  # the series is there but its pixels cannot be read
NOT_PLACED = "not_placed"                # the series was read; no slice fits the point (the detail says why)


@dataclass(frozen=True)
class Unplaced:
    """Why the localiser placed no point for one cell: ``reason`` (NO_SERIES, SERIES_UNREADABLE or
    NOT_PLACED), in its own words (``detail``), and with NO_SERIES the descriptions any of which would have
    served (``needs``), so a caller who read the series table can tell a missing series from a listed one
    that could not be read."""

    reason: str
    detail: str
    needs: tuple[str, ...] = ()


def group_cells(groups: Sequence[str]) -> list[tuple[str, str]]:
    """Every (condition, level) of the given metric groups, in the competition's order."""
    return [(c, lv) for c in schema.CONDITIONS if schema.CONDITION_INFO[c].group in groups for lv in schema.LEVELS]


def view_series(view: View, found: dict[str, list[Series]]) -> list[Series]:
    """The series a detector runs on: the first Sagittal T2/STIR (else T1) for the canal, the first
    Sagittal T1 for the foramina, every Axial T2 for the recesses."""
    if view in (CANAL, CANAL_ROI):
        return (found.get(schema.SAG_T2) or found.get(schema.SAG_T1) or [])[:1]
    if view is FORAMEN:
        return found.get(schema.SAG_T1, [])[:1]
    return list(found.get(schema.AXIAL_T2, []))
