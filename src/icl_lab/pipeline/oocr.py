"""Out-of-context reasoning scored over a run, as a measurement object: each split's accuracy and
answer loss (`icl_lab.measure.oocr.split_scores`) at every checkpoint, as `oocr.accuracy.{split}`
and `oocr.loss.{split}` rows, and the final checkpoint's in `analysis/oocr.json`."""

from __future__ import annotations

from icl_lab.data.oocr import OOCRTask, build_task
from icl_lab.errors import ConfigError
from icl_lab.io import write_json
from icl_lab.measure.evalset import EvalSet
from icl_lab.measure.oocr import PREFIX, split_scores
from icl_lab.pipeline.base import Context, Measurement, Progress, register, store_rows, walk
from icl_lab.pipeline.views import AttentionViewer
from icl_lab.run.results import is_fresh
from icl_lab.run.rundir import Run


def task_of(run: Run) -> OOCRTask:
    """The run's out-of-context reasoning task.

    Raises:
        ConfigError: the run trained on something else.
    """
    if run.config.data.kind != "oocr":
        raise ConfigError(f"{run.path} is not an out-of-context reasoning run (data.kind={run.config.data.kind!r}); "
                          "train one with `icl-lab oocr TASK`")
    return build_task(run.config.data.oocr)



@register
class OOCRScores(Measurement):
    """Accuracy and answer loss on every split of the run's task, at every checkpoint."""

    fans_out = False  # `save` writes what `measure` collected across checkpoints
    name, description = "oocr", "accuracy and answer loss on each split of an out-of-context reasoning task"
    needs_eval_set = False

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        self.task = task_of(run)
        self.final: dict[str, dict[str, float]] = {}

    def measure(self, ctx: Context) -> list[dict]:
        scores = split_scores(ctx.model, self.task)
        if ctx.step == ctx.steps[-1]:
            self.final = scores
        return [ctx.row(f"{PREFIX}{k}.{split}", v) for split, values in scores.items() for k, v in values.items()]

    def save(self, run: Run) -> None:
        s = self.final
        write_json(run.layout.oocr, {"task": run.config.data.oocr.task, "run": str(run.path), "step": run.checkpoints[-1],
                                     "splits": {k: v["accuracy"] for k, v in s.items()}, "loss": {k: v["loss"] for k, v in s.items()},
                                     "chance": self.task.chance})


def evaluate_run(run: Run, progress: Progress | None = None) -> dict:
    """Score every checkpoint of an out-of-context reasoning run, add the rows to its metrics
    table (replacing earlier `oocr.` rows; other rows stay), write `analysis/oocr.json` and store
    the attention viewer (one query of each split) for the report.

    Returns:
        `{task, run, step, splits: {split: accuracy}, loss: {split: loss}, chance}` at the last
        checkpoint.
    """
    m, viewer = OOCRScores(), AttentionViewer()
    table = walk(run, [m, viewer], progress=progress)
    store_rows(run, [m, viewer], table)
    m.save(run)
    viewer.save(run)
    return {"task": run.config.data.oocr.task, "run": str(run.path), "step": run.checkpoints[-1],
            "splits": {k: v["accuracy"] for k, v in m.final.items()}, "loss": {k: v["loss"] for k, v in m.final.items()},
            "chance": m.task.chance}


def is_evaluated(run: Run) -> bool:
    """Whether `evaluate_run` has run since the run's last checkpoint."""
    return is_fresh(run, run.layout.oocr)
