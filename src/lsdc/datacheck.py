"""A check of a competition folder, real or synthetic, before anything is trained on it.

It reads the CSVs and every DICOM file's header (no pixels: dicomsdl through :func:`lsdc.dicom.read_header`,
the pipeline's own reader, in a process pool), and says what it found and what the pipeline will do about
each finding: skip the piece, give the rows the training prior, or stop with an error. The per-file header
table (one row per file: study, series, instance number, image size, pixel spacing, the optional tags, the
reader's error) is written as parquet with polars, for a user who wants to look further.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

from lsdc import schema
from lsdc.data import images_dir, load_coordinates, load_series_descriptions, load_train_labels
from lsdc.dicom import read_header
from lsdc.errors import DataError
from lsdc.io import atomic_path, write_text
from lsdc.progress import progress

log = logging.getLogger(__name__)

HEADERS_PARQUET = "headers.parquet"
REPORT_MD = "data_check.md"
# What the pipeline does about a finding.
OK, SKIP, PRIOR, ERROR, INFO = "ok", "skip", "prior", "error", "info"


@dataclass(frozen=True)
class Finding:
    """One line of the check: what was counted, how many, and what the pipeline does about it."""

    topic: str
    what: str
    count: int | float | str
    action: str      # OK, SKIP, PRIOR, ERROR or INFO
    consequence: str


def file_header(args: tuple[str, int, int, str]) -> dict[str, Any]:
    """One file's header row (a process-pool task): the reader's values, or its error."""
    split, study_id, series_id, path = args
    row: dict[str, Any] = {"split": split, "study_id": study_id, "series_id": series_id, "file": Path(path).name,
                           "instance_number": None, "rows": None, "cols": None, "row_spacing": None,
                           "col_spacing": None, "slice_thickness": None, "spacing_between": None,
                           "description_tag": None, "error": None}
    try:
        h = read_header(path)
    except DataError as exc:
        row["error"] = str(exc)
        return row
    row.update(instance_number=h.instance_number, rows=h.geometry.rows, cols=h.geometry.cols,
               row_spacing=h.geometry.spacing[0], col_spacing=h.geometry.spacing[1],
               slice_thickness=h.slice_thickness, spacing_between=h.spacing_between_slices,
               description_tag=h.series_description)
    return row


HEADER_SCHEMA = {"split": pl.String, "study_id": pl.Int64, "series_id": pl.Int64, "file": pl.String,
                 "instance_number": pl.Int64, "rows": pl.Int64, "cols": pl.Int64, "row_spacing": pl.Float64,
                 "col_spacing": pl.Float64, "slice_thickness": pl.Float64, "spacing_between": pl.Float64,
                 "description_tag": pl.String, "error": pl.String}


def header_table(data_dir: Path, workers: int = 2, show_progress: bool = True) -> pl.DataFrame:
    """Every DICOM file under train_images/ and test_images/ as one header row (:data:`HEADER_SCHEMA`)."""
    tasks = []
    for split in ("train", "test"):
        root = images_dir(data_dir, split)
        if not root.is_dir():
            continue
        for study in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
            for series in sorted(p for p in study.iterdir() if p.is_dir() and p.name.isdigit()):
                tasks += [(split, int(study.name), int(series.name), str(f)) for f in sorted(series.glob("*.dcm"))]
    if workers > 1 and len(tasks) > 1000:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(progress(pool.map(file_header, tasks, chunksize=256), "headers", len(tasks), unit="file",
                                 enabled=show_progress))
    else:
        rows = list(progress(map(file_header, tasks), "headers", len(tasks), unit="file", enabled=show_progress))
    return pl.DataFrame(rows, schema=HEADER_SCHEMA)


def _polars(df: pd.DataFrame) -> pl.DataFrame:
    """A pandas frame as polars, column by column (pl.from_pandas needs pyarrow for string columns)."""
    return pl.DataFrame({c: df[c].tolist() for c in df.columns})


def _series_table(data_dir: Path) -> pl.DataFrame:
    """Both series description CSVs (those present) with their split."""
    frames = []
    for split, name in (("train", schema.TRAIN_SERIES_CSV), ("test", schema.TEST_SERIES_CSV)):
        if (data_dir / name).is_file():
            frames.append(_polars(load_series_descriptions(data_dir, split)).with_columns(
                pl.lit(split).alias("split"), pl.col("study_id", "series_id").cast(pl.Int64)))
    if not frames:
        raise DataError(f"{data_dir}: neither {schema.TRAIN_SERIES_CSV} nor {schema.TEST_SERIES_CSV} found: is "
                        "this a competition folder?")
    return pl.concat(frames)


def series_findings(series: pl.DataFrame, headers: pl.DataFrame) -> list[Finding]:
    """Studies and series per split, what is missing on disk or in the CSV, studies lacking a view."""
    out = []
    on_disk = headers.select("split", "study_id", "series_id").unique()
    for split in ("train", "test"):
        s = series.filter(pl.col("split") == split)
        if s.is_empty():
            continue
        out.append(Finding("studies", f"{split}: studies in the series CSV", s["study_id"].n_unique(), INFO, ""))
        for desc in schema.SERIES_DESCRIPTIONS:
            per_study = s.filter(pl.col("series_description") == desc).group_by("study_id").len()
            uses = ("the localiser uses every one" if desc == schema.AXIAL_T2 else
                    "the localiser uses the first in the CSV's order (the real files list series by series_id)")
            out.append(Finding("series", f"{split}: {desc} series", int(per_study["len"].sum()), INFO,
                               f"{int((per_study['len'] > 1).sum())} studies have more than one: {uses}"))
        absent = s.join(on_disk.filter(pl.col("split") == split), on=["study_id", "series_id"], how="anti")
        out.append(Finding("series", f"{split}: series listed but without files", absent.height,
                           OK if absent.is_empty() else (SKIP if split == "train" else PRIOR),
                           "training: their cells are skipped and listed in the crops' errors.csv" if split == "train"
                           else "their rows get the training prior (predict_report.csv: series_unreadable)"))
        unlisted = on_disk.filter(pl.col("split") == split).join(s, on=["study_id", "series_id"], how="anti")
        out.append(Finding("series", f"{split}: series folders not in the CSV", unlisted.height,
                           OK if unlisted.is_empty() else SKIP, "never read: only listed series are used"))
        have = s.group_by("study_id").agg(pl.col("series_description").unique())
        for desc, cells in ((schema.SAG_T1, "foraminal"), (schema.SAG_T2, "spinal"), (schema.AXIAL_T2, "subarticular")):
            lacking = have.filter(~pl.col("series_description").list.contains(desc)).height
            if desc == schema.SAG_T2:
                does = "the canal is placed on Sagittal T1 instead; without any sagittal series every row is prior"
            elif split == "train":
                does = f"no {cells} training crops for these studies"
            else:
                does = f"their {cells} rows get the training prior (predict_report.csv: no_series)"
            action = INFO if desc == schema.SAG_T2 else SKIP if split == "train" else PRIOR
            out.append(Finding("views", f"{split}: studies without {desc}", lacking, OK if not lacking else action,
                               does))
    return out


def header_findings(headers: pl.DataFrame, series: pl.DataFrame) -> list[Finding]:
    """Unreadable files, optional tags absent, and instance-number, size and spacing ranges per description."""
    out = []
    bad = headers.filter(pl.col("error").is_not_null())
    example = f" (e.g. {bad['error'][0]})" if bad.height else ""
    out.append(Finding("files", "DICOM files read", headers.height, INFO, "headers only"))
    out.append(Finding("files", "files the reader cannot use", bad.height, OK if bad.is_empty() else SKIP,
                       "skipped with a warning naming the file; the rest of the series is used" + example))
    good = headers.filter(pl.col("error").is_null())
    for tag, column in (("SliceThickness", "slice_thickness"), ("SpacingBetweenSlices", "spacing_between")):
        n = good[column].null_count()
        out.append(Finding("tags", f"files without {tag}", n, OK if n == 0 else INFO,
                           "not needed: slices are ordered and spaced by their ImagePositionPatient"))
    out.append(Finding("tags", "files without WindowCenter/WindowWidth", "not read", INFO,
                       "not needed: each crop's window comes from its series' pixel percentiles"))
    per_series = (good.join(series.select("study_id", "series_id", "series_description"),
                            on=["study_id", "series_id"], how="inner")
                  .group_by("series_description", "study_id", "series_id")
                  .agg(pl.col("instance_number").min().alias("first"), pl.col("instance_number").max().alias("last"),
                       pl.len().alias("n"), pl.col("rows").median(), pl.col("cols").median(),
                       pl.col("row_spacing").median().alias("spacing")))
    for desc in schema.SERIES_DESCRIPTIONS:
        d = per_series.filter(pl.col("series_description") == desc)
        if d.is_empty():
            continue
        from_one = float((d["first"] == 1).mean())
        gaps = int((d["last"] - d["first"] + 1 != d["n"]).sum())
        out.append(Finding("instances", f"{desc}: first instance number (median, max); share from 1",
                           f"{d['first'].median():g}, {d['first'].max()}; {from_one:.1%}", INFO,
                           f"{gaps} series with gaps; points are matched to files by InstanceNumber, slices "
                           "ordered by position, so neither matters"))
        out.append(Finding("geometry", f"{desc}: pixel spacing mm (min, median, max)",
                           f"{d['spacing'].min():.2f}, {d['spacing'].median():.2f}, {d['spacing'].max():.2f}", INFO,
                           "crops are cut in millimetres, so any spacing gives the same field of view"))
        out.append(Finding("geometry", f"{desc}: image side px (median rows x cols, max)",
                           f"{d['rows'].median():g} x {d['cols'].median():g}, "
                           f"{max(d['rows'].max(), d['cols'].max()):g}", INFO, ""))
    return out


def label_findings(data_dir: Path, series: pl.DataFrame, headers: pl.DataFrame) -> list[Finding]:
    """train.csv cells empty per group, labelled cells without a coordinate, coordinates that miss their file."""
    if not (data_dir / schema.TRAIN_CSV).is_file():
        return []
    labels = load_train_labels(data_dir)
    out = [Finding("labels", "training studies in train.csv", len(labels), INFO, "")]
    listed = set(series.filter(pl.col("split") == "train")["study_id"].to_list())
    unlisted = int((~labels.study_id.isin(listed)).sum())
    out.append(Finding("labels", "training studies without series", unlisted, OK if not unlisted else SKIP,
                       "no crops: their cells are left out of training and listed in errors.csv"))
    cells = labels.melt(id_vars="study_id", var_name="column", value_name="severity")
    cells["group"] = cells.column.map(schema.group_of_column)
    for group in schema.GROUPS:
        g = cells[cells.group == group]
        n = int(g.severity.isna().sum())
        out.append(Finding("labels", f"empty {group} cells", f"{n} ({n / max(len(g), 1):.2%})", OK if not n else SKIP,
                           "not trained on and not scored (the metric skips unlabelled rows)"))
    studies = int(cells.groupby("study_id").severity.apply(lambda s: s.isna().any()).sum())
    out.append(Finding("labels", "studies with an empty cell", f"{studies} ({studies / max(len(labels), 1):.1%})",
                       INFO, ""))
    if not (data_dir / schema.COORDS_CSV).is_file():
        out.append(Finding("coordinates", f"{schema.COORDS_CSV} missing", 1, ERROR,
                           "crops for training cannot be cut: the crop step stops"))
        return out
    coords = load_coordinates(data_dir)
    cells = cells[cells.severity.notna()]
    cells[["condition", "level"]] = [schema.parse_row_id(f"0_{c}")[1:] for c in cells.column]
    has = cells.merge(coords[["study_id", "condition", "level"]], how="left", indicator=True)._merge == "both"
    for group in schema.GROUPS:
        m = (cells.group == group).to_numpy()
        missing = int((~has[m]).sum())
        out.append(Finding("coordinates", f"labelled {group} cells without a coordinate",
                           f"{missing} ({missing / max(int(m.sum()), 1):.2%})", OK if not missing else SKIP,
                           "no training crop for the cell (and no localiser target)"))
    files = headers.filter((pl.col("split") == "train") & pl.col("error").is_null()).select(
        "study_id", "series_id", "instance_number")
    points = _polars(coords[["study_id", "series_id", "instance_number"]]).cast(pl.Int64)
    orphans = points.join(files, on=["study_id", "series_id", "instance_number"], how="anti").height
    out.append(Finding("coordinates", "coordinates whose instance has no readable file", orphans,
                       OK if not orphans else SKIP, "the crop fails and is listed in errors.csv"))
    return out


def check_data(data_dir: str | Path, out_dir: str | Path, workers: int = 2,
               show_progress: bool = True) -> list[Finding]:
    """Check a competition folder; write ``headers.parquet`` and ``data_check.md`` into ``out_dir``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    series = _series_table(data_dir)
    headers = header_table(data_dir, workers, show_progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / HEADERS_PARQUET) as tmp:
        headers.write_parquet(tmp)
    findings = series_findings(series, headers) + header_findings(headers, series) + label_findings(
        data_dir, series, headers)
    write_text(out_dir / REPORT_MD, findings_markdown(data_dir, findings))
    return findings


def findings_markdown(data_dir: Path, findings: list[Finding]) -> str:
    """The findings as one markdown table, with the counts of pieces the pipeline will skip or give the prior."""
    lines = [f"# Data check of {data_dir}", "", "| topic | what | count | the pipeline | how |",
             "|---|---|---|---|---|"]
    lines += [f"| {f.topic} | {f.what} | {f.count} | {f.action} | {f.consequence} |" for f in findings]
    acted = pd.Series([f.action for f in findings]).value_counts()
    lines += ["", "findings by what the pipeline does: " + ", ".join(f"{k} {v}" for k, v in acted.items())]
    return "\n".join(lines) + "\n"
