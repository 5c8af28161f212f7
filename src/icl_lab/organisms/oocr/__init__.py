"""The out-of-context reasoning organism: train the simplest model that shows the behaviour
(facts A->B and B->C, tested on A->C; the reversal curse; two-hop composition in and out of
distribution), score every checkpoint, take the final model apart (bridge lens, hop patching) and
write a report. Everything it needs is in this folder: the task and its stream (`task`), the
measures (`measure`, `circuits`), the measurement object (`pipeline`), the report section
(`figures`), the lab runner (`lab`), the presets and the `icl-lab oocr` command (docs/oocr.md).

Example:
    >>> from icl_lab.organisms.oocr import run_task
    >>> result = run_task("reversal", out="runs/oocr")
    >>> result.summary["splits"]       # {'trained': 1.0, 'held_out': 0.0, 'in_context': ..., ...}
"""

from icl_lab.kinds import Organism, register
from icl_lab.organisms.oocr import presets
from icl_lab.organisms.oocr.lab import TASKS, OOCRResult, run_task, task_experiment
from icl_lab.organisms.oocr.pipeline import OOCRScores, viewer_samples
from icl_lab.organisms.oocr.task import OOCRConfig, OOCRStream, OOCRTask, build_task, task_problem


def _report():
    from icl_lab.organisms.oocr.figures import SECTION  # plotly loads only when a report is drawn

    return SECTION


def _commands(app) -> None:
    from icl_lab.organisms.oocr.cli import add_commands

    add_commands(app)


ORGANISM = register(Organism(
    kind="oocr", title="out-of-context reasoning", how_to_train="train one with `icl-lab oocr TASK`",
    config=OOCRConfig, stream=OOCRStream, problem=task_problem, how_to_measure="score it with `icl-lab oocr` TASK",
    measurements=(OOCRScores.name,), viewer_samples=viewer_samples, report=_report, add_commands=_commands,
))
presets.register_presets()

__all__ = ["ORGANISM", "OOCRConfig", "OOCRResult", "OOCRScores", "OOCRStream", "OOCRTask", "TASKS", "build_task", "run_task",
           "task_experiment"]
