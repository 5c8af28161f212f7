"""The out-of-context reasoning lab: train the simplest model that shows the behaviour (facts
A->B and B->C, tested on A->C; the reversal curse; two-hop composition in and out of
distribution), score every checkpoint, take the final model apart (bridge lens, hop patching) and
write a report. Sits beside `reproduce`, after `report` in the flow
data -> model -> train -> run -> measure -> intervene -> report -> oocr -> cli.

Example:
    >>> from icl_lab.oocr import run_task
    >>> result = run_task("reversal", out="runs/oocr")
    >>> result.summary["splits"]       # {'trained': 1.0, 'held_out': 0.0, 'in_context': ..., ...}
"""

from icl_lab.oocr.lab import TASKS, OOCRResult, run_task, task_experiment

__all__ = ["OOCRResult", "TASKS", "run_task", "task_experiment"]
