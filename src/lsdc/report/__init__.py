"""The paper's evaluation report: experiments, tables, figures, case sheets and report.md.

``build_report`` is the entry point (scripts/06_paper_report.py); the modules hold one part each.
"""

from lsdc.report.build import REPORT_DIR, REPORT_MD, SYNTHETIC_DISCLAIMER, Report, build_report, describe_data
from lsdc.report.tables import markdown_table

__all__ = ["REPORT_DIR", "REPORT_MD", "SYNTHETIC_DISCLAIMER", "Report", "build_report", "describe_data",
           "markdown_table"]
