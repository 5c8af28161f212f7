"""The measurement pipeline: walks a run's checkpoints once and applies measurement objects
(`Measurement`: a name, what it needs, rows out), then stores the rows in the run's
`MetricsStore` and the views the report draws. `measure` and `intervene` hold the pure functions
it calls; `report` only reads what it stored. After `intervene` in the flow data -> model -> train
-> run -> measure -> intervene -> pipeline -> report.

Example:
    >>> from icl_lab import pipeline
    >>> sorted(pipeline.REGISTRY)                                       # every registered measurement
    >>> pipeline.analyze([run], only=["prefix_matching", "icl_score"])  # `icl-lab analyze RUN --only ...`
    >>> pipeline.ablate_run(run, kinds=("zero",))                       # `icl-lab ablate RUN --kind zero`
"""

from icl_lab.pipeline.base import REGISTRY, Context, Measurement, measure_run, measurements, register, store_rows, walk
from icl_lab.pipeline.analysis import ANALYSIS, HEAD_METRICS, HeadScore  # noqa: I001  (registers the analysis measurements)
from icl_lab.pipeline.views import AttentionViewer, Composition, view_steps
from icl_lab.pipeline.analyze import ANALYSIS_VERSION, analyze, is_analysed, reusable_analysis
from icl_lab.pipeline.ablation import Ablation, ablate_run, is_ablated, reusable_ablation
from icl_lab.pipeline.evalstore import eval_set_for, load_eval_set, save_eval_set
from icl_lab.pipeline.llc import LLC, calibrate_run, llc_run, llc_settings, read_calibration, reusable_llc
from icl_lab.pipeline.fanout import fan_out

__all__ = [
    "ANALYSIS", "ANALYSIS_VERSION", "Ablation", "AttentionViewer", "Composition", "Context", "HEAD_METRICS", "HeadScore", "LLC",
    "Measurement", "REGISTRY", "ablate_run", "analyze", "calibrate_run", "eval_set_for", "fan_out", "is_ablated", "is_analysed",
    "llc_run", "llc_settings", "load_eval_set", "measure_run", "measurements", "read_calibration", "register", "reusable_ablation",
    "reusable_analysis", "reusable_llc", "save_eval_set", "store_rows", "view_steps", "walk",
]
