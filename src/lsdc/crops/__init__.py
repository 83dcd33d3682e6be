"""ROI crops: one image per (study, condition, level), centred on its point, of a fixed size in mm.

The very same :func:`crop_roi` makes the training crops (from annotated coordinates) and the test
crops (from localised points), so a model never sees a crop made differently at inference.
A crop has ``n_slices`` channels: the slice the point lies on and its neighbours along the slice
normal. Neighbours are found through patient space (the point is projected onto each neighbour), so
slices of other shapes or oblique blocks in the same series are handled.

``config`` says how a crop is cut, ``roi`` cuts one, ``study`` cuts a study's, ``training_set`` the
training set's.
"""

from lsdc.crops.config import CROP_VERSION, DEFAULT_SIZE_MM, PIXEL_SETTINGS, WINDOW_SLICES, CropConfig
from lsdc.crops.roi import (
    crop_roi,
    intensity_window,
    is_valid_crop,
    load_crop,
    neighbour_indices,
    resample_patch,
    save_crop,
    series_window,
    window_slices,
)
from lsdc.crops.study import CropRequest, crop_name, crop_study, index_row, study_task
from lsdc.crops.training_set import (
    ARRAY_NPY,
    CONTACT_SHEET,
    ERROR_COLUMNS,
    ERRORS_CSV,
    INDEX_COLUMNS,
    INDEX_CSV,
    SETTINGS_JSON,
    build_array,
    contact_sheet,
    crops_dirname,
    load_array,
    localized_requests,
    prepare,
    training_requests,
)

__all__ = [
    "ARRAY_NPY", "CONTACT_SHEET", "CROP_VERSION", "DEFAULT_SIZE_MM", "ERRORS_CSV", "ERROR_COLUMNS", "INDEX_COLUMNS",
    "INDEX_CSV", "PIXEL_SETTINGS", "SETTINGS_JSON", "WINDOW_SLICES", "CropConfig", "CropRequest", "build_array",
    "contact_sheet", "crop_name", "crop_roi", "crop_study", "crops_dirname", "index_row", "intensity_window",
    "is_valid_crop", "load_array", "load_crop", "localized_requests", "neighbour_indices", "prepare",
    "resample_patch", "save_crop", "series_window", "study_task", "training_requests", "window_slices",
]
