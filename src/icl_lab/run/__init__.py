"""The run stage: open a run directory written by the trainer, rebuild its models and logs, and
own its metrics table (`MetricsStore`). `RunFiles` reads a run without its models (the report's view).
After `train` in the flow data -> model -> train -> run -> measure."""

from icl_lab.run.files import RunFiles, open_run_files
from icl_lab.run.rundir import Run, check_eval_data, load_run
from icl_lab.run.store import MetricsStore

__all__ = ["MetricsStore", "Run", "RunFiles", "check_eval_data", "load_run", "open_run_files"]
