"""Reports of a sweep against the paper: tables with declared contrasts, Holm-adjusted verdicts and plots.

Entry points: `write_report` (files into a folder), `table_markdown` (markdown and a
DataFrame), `load_results` and `results_frame` (the raw sweep), and the command
line `python -m resnext_lab.report SWEEP_DIR --experiment NAME --out DIR`.
"""

from resnext_lab.report.collect import group_cells, load_curves, load_results, results_frame
from resnext_lab.report.stats import Difference, Summary, difference, holm, summarize, verdict, welch
from resnext_lab.report.table_def import experiment_file, load_table_def, validate_table
from resnext_lab.report.tables import table_markdown, write_report

__all__ = [
    "Difference",
    "Summary",
    "difference",
    "experiment_file",
    "group_cells",
    "holm",
    "load_curves",
    "load_results",
    "load_table_def",
    "table_markdown",
    "results_frame",
    "summarize",
    "validate_table",
    "verdict",
    "welch",
    "write_report",
]
