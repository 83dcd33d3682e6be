"""The competition's vocabulary: conditions, levels, severities, series and row ids.

Every other module imports these names; no condition string is spelled anywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONDITIONS: tuple[str, ...] = (
    "Spinal Canal Stenosis",
    "Left Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing",
    "Left Subarticular Stenosis",
    "Right Subarticular Stenosis",
)
LEVELS: tuple[str, ...] = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
SEVERITY_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
SEVERITY_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)

SAG_T1 = "Sagittal T1"
SAG_T2 = "Sagittal T2/STIR"
AXIAL_T2 = "Axial T2"
SERIES_DESCRIPTIONS: tuple[str, ...] = (SAG_T1, SAG_T2, AXIAL_T2)

GROUPS: tuple[str, ...] = ("spinal", "foraminal", "subarticular")

# Files of the competition folder.
TRAIN_CSV = "train.csv"
COORDS_CSV = "train_label_coordinates.csv"
TRAIN_SERIES_CSV = "train_series_descriptions.csv"
TEST_SERIES_CSV = "test_series_descriptions.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
TRAIN_IMAGES = "train_images"
TEST_IMAGES = "test_images"
TEST_SOLUTION_CSV = "test_solution.csv"  # synthetic data only: the test studies' true labels
SUBMISSION_COLUMNS: tuple[str, ...] = ("row_id", *SEVERITY_COLUMNS)
COORD_COLUMNS: tuple[str, ...] = (
    "study_id", "series_id", "instance_number", "condition", "level", "x", "y",
)
SERIES_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "series_description")


@dataclass(frozen=True)
class ConditionInfo:
    """What the pipeline needs to know about one condition."""

    name: str          # as spelled in train_label_coordinates.csv
    slug: str          # as in train.csv columns and row ids
    group: str         # metric group
    side: str | None   # "left", "right" or None
    series: str        # series description the condition is read from


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _group(name: str) -> str:
    if "Spinal" in name:
        return "spinal"
    if "Foraminal" in name:
        return "foraminal"
    return "subarticular"


def _series(group: str) -> str:
    return {"spinal": SAG_T2, "foraminal": SAG_T1, "subarticular": AXIAL_T2}[group]


CONDITION_INFO: dict[str, ConditionInfo] = {
    name: ConditionInfo(
        name=name,
        slug=_slug(name),
        group=_group(name),
        side=("left" if name.startswith("Left") else "right" if name.startswith("Right") else None),
        series=_series(_group(name)),
    )
    for name in CONDITIONS
}
CONDITION_SLUGS: tuple[str, ...] = tuple(CONDITION_INFO[c].slug for c in CONDITIONS)
LEVEL_SLUGS: tuple[str, ...] = tuple(_slug(lv) for lv in LEVELS)
CONDITION_BY_SLUG: dict[str, str] = {CONDITION_INFO[c].slug: c for c in CONDITIONS}
LEVEL_BY_SLUG: dict[str, str] = dict(zip(LEVEL_SLUGS, LEVELS))
SEVERITY_INDEX: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}


def condition_for(group: str, side: str | None = None) -> str:
    """The condition of a metric group and side, e.g. ('foraminal', 'left')."""
    for info in CONDITION_INFO.values():
        if info.group == group and info.side == side:
            return info.name
    raise KeyError(f"no condition for group={group!r} side={side!r}")


def label_column(condition: str, level: str) -> str:
    """train.csv column of a (condition, level), e.g. 'spinal_canal_stenosis_l4_l5'."""
    return f"{CONDITION_INFO[condition].slug}_{_slug(level)}"


LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(c, lv) for c in CONDITIONS for lv in LEVELS)
TRAIN_COLUMNS: tuple[str, ...] = ("study_id", *LABEL_COLUMNS)


def row_id(study_id: int, condition: str, level: str) -> str:
    """Submission row id, e.g. '44036939_left_neural_foraminal_narrowing_l1_l2'."""
    return f"{int(study_id)}_{label_column(condition, level)}"


def study_row_ids(study_id: int) -> list[str]:
    """The 25 row ids of one study, in train.csv column order."""
    return [f"{int(study_id)}_{col}" for col in LABEL_COLUMNS]


_ROW_ID_RE = re.compile(r"^(\d+)_(.+)$")
_COLUMN_INDEX = {col: (c, lv) for c in CONDITIONS for lv in LEVELS for col in [label_column(c, lv)]}


def parse_row_id(rid: str) -> tuple[int, str, str]:
    """Inverse of :func:`row_id`: (study_id, condition, level); ValueError if malformed."""
    m = _ROW_ID_RE.match(rid)
    if not m or m.group(2) not in _COLUMN_INDEX:
        raise ValueError(f"malformed row_id {rid!r}")
    condition, level = _COLUMN_INDEX[m.group(2)]
    return int(m.group(1)), condition, level


def group_of_column(column: str) -> str:
    """Metric group of a label column or row-id suffix."""
    return CONDITION_INFO[_COLUMN_INDEX[column][0]].group
