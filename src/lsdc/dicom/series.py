"""A series folder as slices sorted along their common normal, with lazily read, cached pixels."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsdc.dicom.header import SliceHeader
from lsdc.dicom.pixels import read_slice
from lsdc.dicom.reader import read_header
from lsdc.errors import DataError
from lsdc.geometry import SliceGeometry, nearest_slice, pixel_to_patient

logger = logging.getLogger(__name__)

_ORIENTATIONS = ("sagittal", "coronal", "axial")  # by the dominant LPS axis of the slice normal


@dataclass
class Series:
    """The slices of one series, sorted along the series' slice normal, with lazily read pixels.

    ``slices`` may be given in any order: they are sorted on construction by ``positions``, the
    distance in mm of each slice's centre along ``normal``. ``normal`` is the mean of the slices'
    normals (sign-aligned), flipped so that its dominant LPS component is positive. Index 0 is thus
    the patient's right-most slice of a sagittal series (x grows to the patient's left), the
    lowest (most inferior) of an axial one, the most anterior of a coronal one. Using slice centres
    and a common normal keeps several oblique blocks of one axial series in a sensible order;
    for parallel slices it is the same as sorting by ImagePositionPatient along their normal.
    """

    study_id: int | None
    series_id: int | None
    slices: list[SliceHeader]
    description: str | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files and why
    directory: Path | None = None
    normal: np.ndarray = field(init=False, repr=False, compare=False)     # (3,) unit vector, LPS
    positions: np.ndarray = field(init=False, repr=False, compare=False)  # (n,) mm, ascending
    _cache: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)
    _by_instance: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.slices:
            raise DataError(f"{self.name}: series has no slices")
        geoms = [s.geometry for s in self.slices]
        iop = np.array([g.iop for g in geoms])  # (n, 6)
        self.normal = _common_normal(np.cross(iop[:, :3], iop[:, 3:]))
        pos = _centres(geoms, iop) @ self.normal
        order = sorted(range(len(self.slices)),
                       key=lambda i: (pos[i], self.slices[i].instance_number, str(self.slices[i].path)))
        self.slices = [self.slices[i] for i in order]
        self.positions = pos[order]
        self._cache = {}
        self._by_instance = {}
        for i, s in enumerate(self.slices):
            self._by_instance.setdefault(s.instance_number, i)
        dupes = [n for n, c in Counter(self.instance_numbers).items() if c > 1]
        if dupes:
            logger.warning("%s: duplicate instance numbers %s; index_of_instance returns the first",
                           self.name, sorted(dupes))

    @property
    def name(self) -> str:
        """How error messages refer to this series."""
        if self.study_id is not None or self.series_id is not None:
            return f"series {self.study_id}/{self.series_id}"
        return f"series {self.directory}" if self.directory is not None else "series"

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def instance_numbers(self) -> list[int]:
        """InstanceNumber of each slice, in slice order (not necessarily contiguous or sorted)."""
        return [s.instance_number for s in self.slices]

    @property
    def orientation(self) -> str:
        """'sagittal', 'coronal' or 'axial', from the dominant LPS axis of the slice normal."""
        return _ORIENTATIONS[int(np.argmax(np.abs(self.normal)))]

    @property
    def is_sagittal(self) -> bool:
        return self.orientation == "sagittal"

    @property
    def is_axial(self) -> bool:
        return self.orientation == "axial"

    @property
    def slice_spacing(self) -> float | None:
        """Median distance in mm between neighbouring slices; None for a single slice."""
        if len(self.slices) < 2:
            return None
        return float(np.median(np.diff(self.positions)))

    def index_of_instance(self, instance_number: int) -> int:
        """Slice index of an InstanceNumber (as in train_label_coordinates.csv)."""
        try:
            return self._by_instance[int(instance_number)]
        except KeyError:
            raise DataError(f"{self.name}: no slice with instance number {instance_number}") from None

    def geometries(self) -> list[SliceGeometry]:
        """Geometry of each slice, in slice order; shapes and spacings may differ between slices."""
        return [s.geometry for s in self.slices]

    def image(self, i: int) -> np.ndarray:
        """Pixels of slice i, float32 (rows, cols), decoded on first use and cached.

        The cached array is read-only so that callers cannot corrupt it; copy it to modify it.
        """
        i = range(len(self.slices))[i]  # normalises negative indices, raises IndexError
        if i not in self._cache:
            arr = read_slice(self.slices[i])
            arr.flags.writeable = False
            self._cache[i] = arr
        return self._cache[i]

    def images(self, indices: Iterable[int]) -> list[np.ndarray]:
        """Pixels of several slices; a list because shapes may differ within a series."""
        return [self.image(i) for i in indices]

    def clear_cache(self) -> None:
        """Forget decoded pixels (a long axial series is about 1 MB per slice)."""
        self._cache.clear()

    def pixel_to_patient(self, i: int, x: float, y: float) -> np.ndarray:
        """Patient LPS coordinates (3,) in mm of pixel (x=column, y=row) on slice i."""
        return pixel_to_patient(self.slices[i].geometry, x, y)

    def project(self, point_lps: Sequence[float] | np.ndarray) -> tuple[int, float, float, float]:
        """Nearest slice to a patient point (mm, LPS): (index, x, y, |distance| in mm)."""
        return nearest_slice(self.geometries(), np.asarray(point_lps, dtype=float))


def load_series(
    series_dir: str | os.PathLike[str],
    study_id: int | None = None,
    series_id: int | None = None,
    description: str | None = None,
) -> Series:
    """Read the headers of every file in a series folder and sort the slices by position.

    Files that cannot be read (corrupt, truncated, not DICOM, missing geometry) are skipped with a
    logged warning naming the file and the reason, and listed in ``Series.skipped``; hidden files
    (dot files) and sub-folders are ignored. study_id and series_id default to the names of the
    folder's parent and of the folder when those are integers, description to the slices' common
    SeriesDescription. Raises DataError naming the folder if it is missing or holds no readable slice.
    """
    directory = Path(series_dir)
    if not directory.is_dir():
        raise DataError(f"series folder {directory} does not exist")
    files = sorted((p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=_natural_key)
    headers: list[SliceHeader] = []
    skipped: list[tuple[Path, str]] = []
    for p in files:
        try:
            headers.append(read_header(p))
        except DataError as e:
            logger.warning("skipping %s", e)
            skipped.append((p, str(e)))
    if not headers:
        raise DataError(f"series folder {directory}: no readable DICOM slice among {len(files)} files")
    if description is None:
        found = {h.series_description for h in headers} - {None}
        description = found.pop() if len(found) == 1 else None
    return Series(
        study_id=_int_or_none(directory.parent.name) if study_id is None else int(study_id),
        series_id=_int_or_none(directory.name) if series_id is None else int(series_id),
        slices=headers,
        description=description,
        skipped=skipped,
        directory=directory,
    )


def list_series(study_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """Series folders of a study folder, {series_id: path}, sorted by id; non-numeric names ignored."""
    directory = Path(study_dir)
    if not directory.is_dir():
        raise DataError(f"study folder {directory} does not exist")
    found = {int(p.name): p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()}
    return dict(sorted(found.items()))


def _common_normal(normals: np.ndarray) -> np.ndarray:
    """Mean of the slice normals (n, 3) (sign-aligned, any length), flipped to make its dominant
    component positive."""
    normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    signs = np.where(normals @ normals[0] < 0, -1.0, 1.0)
    n = (normals * signs[:, None]).sum(axis=0)
    n /= np.linalg.norm(n)
    return -n if n[int(np.argmax(np.abs(n)))] < 0 else n


def _centres(geoms: list[SliceGeometry], iop: np.ndarray) -> np.ndarray:
    """Patient coordinates (n, 3) of the image centres (pixel_to_patient of each, vectorised)."""
    ipp = np.array([g.ipp for g in geoms])
    half = np.array([[(g.cols - 1) / 2 * g.spacing[1], (g.rows - 1) / 2 * g.spacing[0]] for g in geoms])
    return ipp + half[:, :1] * iop[:, :3] + half[:, 1:] * iop[:, 3:]


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _natural_key(p: Path) -> tuple[int, int | str]:
    """Sort '2.dcm' before '10.dcm' (only for stable logging; slices are sorted by geometry)."""
    return (0, int(p.stem)) if re.fullmatch(r"\d+", p.stem) else (1, p.name)
