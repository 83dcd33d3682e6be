"""A synthetic stand-in for the competition data, in exactly the competition's files and formats.

Each study is one coherent 3D lumbar spine: vertebral bodies and discs L1 to S1 on a lordotic curve,
possibly with a scoliotic lateral curve and axial twist, the dural sac behind them, neural foramina
and subarticular recesses on each side whose distance from the canal varies from person to person,
level to level and side to side. The spine is built in the patient's own (body) axes and placed in
the scanner slightly rotated, so the slices, planned in scanner terms as a technologist would
(sagittal stacks along left-right, axial blocks angled through each disc or one continuous stack
over several levels), never line up exactly with the anatomy. Every label is drawn where it belongs:
spinal canal stenosis narrows the canal at its level, foraminal narrowing one side's foramen,
subarticular stenosis one side's recess. The anatomy is painted into a label volume in body
coordinates, turned into T1 / T2 / STIR contrast, and sampled through each slice's real DICOM
geometry (world -> body is a rotation, so the pixel -> voxel map stays affine), with scanner-like
variation, a bias field and Rician noise. Training labels carry the real data's kinds of noise
(grades one step off, coordinates a few mm off, the odd L4/L5 - L5/S1 swap); the test labels are clean.

``config`` holds the knobs (``SyntheticConfig``, ``V1_STYLE``), the generator's version and the marker
file's name; ``anatomy`` one patient's spine, its pose and its grades; ``painting`` the tissues and the
label volume; ``acquisition`` the series plans and their rendering; ``dicom_writing`` the files and
their headers; ``labels`` empty cells, grade noise and the coordinate rows; ``study`` one study from
its seed to its files; ``dataset`` the whole folder (``generate``) and its CSVs.
"""

from lsdc.synthetic.acquisition import SeriesPlan
from lsdc.synthetic.anatomy import CLASS_MIX, SIDES, Anatomy, draw_labels, make_anatomy
from lsdc.synthetic.config import GENERATOR_VERSION, MARKER, V1_STYLE, SyntheticConfig
from lsdc.synthetic.dataset import generate, study_tasks
from lsdc.synthetic.labels import annotation_error, noisy_grades, swapped_condition
from lsdc.synthetic.painting import (
    AIR,
    ANNULUS,
    BONE,
    CSF,
    FAT,
    LIGAMENT,
    MARROW,
    MUSCLE,
    NERVE,
    NUCLEUS,
    ORGAN,
    Volume,
    paint_study,
)
from lsdc.synthetic.study import Study, StudyResult, annotate_study, generate_study, simulate_study

__all__ = [
    "AIR",
    "ANNULUS",
    "BONE",
    "CLASS_MIX",
    "CSF",
    "FAT",
    "GENERATOR_VERSION",
    "LIGAMENT",
    "MARKER",
    "MARROW",
    "MUSCLE",
    "NERVE",
    "NUCLEUS",
    "ORGAN",
    "SIDES",
    "V1_STYLE",
    "Anatomy",
    "SeriesPlan",
    "Study",
    "StudyResult",
    "SyntheticConfig",
    "Volume",
    "annotate_study",
    "annotation_error",
    "draw_labels",
    "generate",
    "generate_study",
    "make_anatomy",
    "noisy_grades",
    "paint_study",
    "simulate_study",
    "study_tasks",
    "swapped_condition",
]
