"""The report stage: one self-contained HTML page per set of runs (loss and ICL score over
training, loss by position, PCA trajectories, the Model Analysis Table, an attention viewer, a
composition graph and a verdict), and a local server that lists runs and opens their reports.
It reads what the pipeline stored and never runs a model (an import contract holds it to that).
After `pipeline` in the flow data -> model -> train -> run -> measure -> intervene -> pipeline -> report -> cli.

Example:
    >>> from icl_lab.report import write_report
    >>> report = write_report(["runs/demo/synthetic-2l", "runs/demo/synthetic-1l"], out="report.html")
    >>> print("\\n".join(report.verdict))
"""

from icl_lab.report.build import Report, build_report, default_out, write_report
from icl_lab.report.collect import RunData, collect_run
from icl_lab.report.figures import (
    composition_figure,
    loss_by_position_figure,
    loss_figure,
    pca_figure,
)
from icl_lab.report.page import render_html
from icl_lab.report.server import make_server
from icl_lab.report.table import analysis_table_figure
from icl_lab.report.verdict import Verdict, judge, verdict_lines

__all__ = [
    "Report", "RunData", "Verdict", "analysis_table_figure", "build_report", "collect_run", "composition_figure",
    "default_out", "judge", "loss_by_position_figure", "loss_figure", "make_server", "pca_figure", "render_html",
    "verdict_lines", "write_report",
]
