"""The localiser's settings and the names of what it writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from lsdc.experiment import FoldConfig

LOCALIZER_PT = "localizer.pt"
OOF_POINTS_CSV = "oof_points.csv"
# Per held-out cell: the crop request the localiser made (empty when it placed none), and, for annotated
# cells, its error; lsdc.localized_oof classifies exactly these crops.
OOF_POINT_COLUMNS = ("study_id", "condition", "level", "annotated", "error_mm", "slice_correct", "series_id",
                     "instance_number", "x", "y")


@dataclass
class LocalizerConfig:
    image_size: int = 256            # each slice is resized to this square
    width: int = 16                  # base channels of each view's network
    stride: int = 2                  # heatmap cell = stride input pixels (2 or 4)
    sigma: float = 1.5               # target Gaussian around a point, in heatmap cells
    epochs: int = 30
    lr: float = 2e-3
    context_slices: int = 2          # training: the annotated slices and this many neighbours on each side ...
    random_slices: int = 3           # ... and this many other slices per series compete for each point
    axial_window_mm: float = 12.0    # a level's axial candidates: planes this close to its canal point
    # A recess lies at its disc's height, as the level's canal point does: each axial candidate's score gets
    # the log of a Gaussian of its plane's distance from that point (0: the detector alone decides).
    axial_prior_mm: float = 4.0
    axial_jitter_mm: float = 3.0     # training: the canal point moves as the detected one would
    # The second canal, foramen and recess detectors see a square of this side around the canal (0: the
    # second canal detector is left out; the others see the whole image).
    canal_roi_mm: float = 180.0
    foramen_roi_mm: float = 160.0
    recess_roi_mm: float = 70.0
    augment: bool = True
    device: str = "auto"
    seed: int = 0


@dataclass
class LocalizerExperiment:
    """The localiser's config file: its folder name, the shared folds and its own settings."""

    name: str = "localizer"
    folds: FoldConfig = field(default_factory=FoldConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
