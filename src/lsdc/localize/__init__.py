"""Test-time localisation: each (condition, level) found directly in the view it is graded on.

Three detectors, one per view, each a small heatmap U-Net (:class:`lsdc.models.KeypointNet`) run on every
slice of the view's series, the slice and its two neighbours as channels:

- ``canal``: Sagittal T2/STIR (Sagittal T1 when the study has none), one channel per level. The five
  points share one slice, as annotators place them: the slice with the best joint score of the five levels.
- ``foramen``: Sagittal T1, one channel per level. Each level's left and right foramen is the best slice on
  that side of the level's canal point (found on the sagittal canal view), so scoliosis and a rotated
  patient move the candidates with the spine.
- ``recess``: every Axial T2 series of the study, two channels (left, right). A level's candidates are the
  axial slices, over all axial series, whose plane passes within ``axial_window_mm`` of that level's canal
  point: levels on axial stacks come through patient coordinates from the sagittal points.

Each channel's map on a slice gives a slice score, the log-sum-exp of its logits (how strongly the structure
is there), and a position, the softmax-weighted mean near the peak. Training minimises, per annotated point,
the cross-entropy of the softmax over candidate slices (the annotated slice against its neighbours and
others) plus the cross-entropy between the spatial softmax on the annotated slice and a Gaussian around the
point. The output is a list of :class:`lsdc.crops.CropRequest`, cropped by the very code that made the
training crops.

Where it lives: ``config`` (settings, file names), ``views`` (the detectors, their series, why a cell is
unplaced), ``heatmaps`` (loss, slice score, decoding), ``stack`` (a series as a detector's input),
``targets`` (annotations as training targets, axial candidates), ``fit`` (training one detector),
``localizer`` (the trained localiser placing a study's points), ``oof`` (out-of-fold evaluation),
``train`` (the resumable fold-by-fold training).
"""

from lsdc.localize.config import LOCALIZER_PT, OOF_POINT_COLUMNS, OOF_POINTS_CSV, LocalizerConfig, LocalizerExperiment
from lsdc.localize.fit import fit_view, view_samples
from lsdc.localize.heatmaps import decode, heatmap_loss, slice_scores
from lsdc.localize.localizer import Localizer, find_localizer, trained_localizers
from lsdc.localize.oof import evaluate, localizer_metrics
from lsdc.localize.stack import Stack, roi_centres, view_stack
from lsdc.localize.targets import StudyPoints, annotated_points, axial_candidates, axial_prior, view_targets
from lsdc.localize.train import localizer_inputs, train_localizer
from lsdc.localize.views import (
    CANAL,
    CANAL_ROI,
    FORAMEN,
    NO_SERIES,
    NOT_PLACED,
    RECESS,
    SERIES_UNREADABLE,
    SIDES,
    VIEW_SERIES,
    VIEWS,
    Unplaced,
    View,
    group_cells,
    view_series,
)

__all__ = [
    "CANAL", "CANAL_ROI", "FORAMEN", "LOCALIZER_PT", "NOT_PLACED", "NO_SERIES", "OOF_POINTS_CSV", "OOF_POINT_COLUMNS",
    "RECESS", "SERIES_UNREADABLE", "SIDES", "VIEWS", "VIEW_SERIES", "Localizer", "LocalizerConfig",
    "LocalizerExperiment", "Stack", "StudyPoints", "Unplaced", "View", "annotated_points", "axial_candidates",
    "axial_prior", "decode", "evaluate", "find_localizer", "fit_view", "group_cells", "heatmap_loss",
    "localizer_inputs", "localizer_metrics", "roi_centres", "slice_scores", "train_localizer", "trained_localizers",
    "view_samples", "view_series", "view_stack", "view_targets",
]
