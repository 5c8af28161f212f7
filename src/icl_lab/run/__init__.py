"""The run stage: open a run directory written by the trainer and rebuild its models and logs.
After `train` in the flow data -> model -> train -> run -> measure."""

from icl_lab.run.rundir import Run, check_eval_data, load_run

__all__ = ["Run", "check_eval_data", "load_run"]
