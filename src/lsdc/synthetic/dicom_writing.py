"""Writing a rendered series as DICOM files with the headers a scanner gives them: UIDs derived from the
study and series, a display window per slice, spacing and rescale tags present or not, as the study drew."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from lsdc.dicom import write_slice
from lsdc.synthetic.acquisition import SeriesPlan


def derived_uid(*parts: Any) -> str:
    """A UID made from ``parts``: the same study, series or slice gets the same UID every time."""
    return str(generate_uid(prefix="1.2.826.0.1.3680043.10.1415.", entropy_srcs=[str(p) for p in parts]))


def display_window(img: np.ndarray) -> tuple[int, int]:
    """(WindowCenter, WindowWidth) a scanner would store for a slice: the 0.5-99.5 percentile range, whole
    numbers as real files hold them (code written for them reads ``int(dcm.WindowCenter)``)."""
    lo, hi = np.percentile(img, (0.5, 99.5))
    return int(round((lo + hi) / 2)), max(1, int(round(hi - lo)))


def write_series(series_dir: Path, plan: SeriesPlan, images: list[np.ndarray], study_id: int, series_number: int,
                 with_spacing_tags: bool, rescale: bool) -> None:
    """Write one rendered series into ``series_dir``, one ``<InstanceNumber>.dcm`` file per slice."""
    series_dir.mkdir(parents=True, exist_ok=True)
    for g, img, inst in zip(plan.slices, images, plan.instance_numbers, strict=True):
        write_slice(series_dir / f"{inst}.dcm", img, g, inst, plan.description,
                    study_uid=derived_uid(study_id), series_uid=derived_uid(study_id, plan.series_id),
                    sop_uid=derived_uid(study_id, plan.series_id, inst), patient_id=str(study_id),
                    frame_of_reference_uid=derived_uid(study_id, "frame"), series_number=series_number,
                    slice_thickness=plan.slice_thickness if with_spacing_tags else None,
                    spacing_between_slices=plan.spacing_between if with_spacing_tags else None,
                    rescale_slope=1.0 if rescale else None, rescale_intercept=0.0 if rescale else None,
                    window=display_window(img))

