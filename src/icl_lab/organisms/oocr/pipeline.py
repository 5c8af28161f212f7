"""Out-of-context reasoning scored over a run, as a measurement object: each split's accuracy and
answer loss (`icl_lab.organisms.oocr.measure.split_scores`) at every checkpoint, as `oocr.accuracy.{split}`
and `oocr.loss.{split}` rows, and the final checkpoint's in `analysis/oocr.json`."""

from __future__ import annotations

import torch

from icl_lab.kinds import organism
from icl_lab.io import write_json
from icl_lab.measure.evalset import EvalSet
from icl_lab.organisms.oocr.measure import PREFIX, split_scores
from icl_lab.organisms.oocr.results import summary_path
from icl_lab.organisms.oocr.task import PAD, OOCRTask, build_task, token_label
from icl_lab.pipeline.base import Context, Measurement, Progress, register, store_rows, walk
from icl_lab.pipeline.views import AttentionViewer
from icl_lab.run.results import is_fresh
from icl_lab.run.rundir import Run


def task_of(run: Run) -> OOCRTask:
    """The run's out-of-context reasoning task.

    Raises:
        ConfigError: the run trained on something else.
    """
    return build_task(organism("oocr").section_of(run))


def viewer_samples(run: Run) -> tuple[torch.Tensor, list[dict]]:
    """The attention viewer's sequences: one query of each split, with its answer, padded to the model's context."""
    task = build_task(run.config.data.oocr)
    rows, samples = [], []
    for name, (prompts, answers) in task.splits.items():
        if len(prompts):
            row = torch.cat([prompts[0], answers[0]]).tolist()
            rows.append(row + [PAD] * (run.config.model.n_ctx - len(row)))
            samples.append({"name": f"{name} query and answer", "tokens": [token_label(task, t) for t in rows[-1]]})
    return torch.tensor(rows), samples


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
        write_json(summary_path(run), {"task": run.config.data.oocr.task, "run": str(run.path), "step": run.checkpoints[-1],
                                     "splits": {k: v["accuracy"] for k, v in s.items()}, "loss": {k: v["loss"] for k, v in s.items()},
                                     "chance": self.task.chance})


def evaluate_run(run: Run, progress: Progress | None = None, device: str | None = None, dtype: str | None = None) -> dict:
    """Score every checkpoint of an out-of-context reasoning run, add the rows to its metrics
    table (replacing earlier `oocr.` rows; other rows stay), write `analysis/oocr.json` and store
    the attention viewer (one query of each split) for the report.

    Returns:
        `{task, run, step, splits: {split: accuracy}, loss: {split: loss}, chance}` at the last
        checkpoint.
    """
    m, viewer = OOCRScores(), AttentionViewer()
    table = walk(run, [m, viewer], progress=progress, device=device, dtype=dtype)
    store_rows(run, [m, viewer], table)
    m.save(run)
    viewer.save(run)
    return {"task": run.config.data.oocr.task, "run": str(run.path), "step": run.checkpoints[-1],
            "splits": {k: v["accuracy"] for k, v in m.final.items()}, "loss": {k: v["loss"] for k, v in m.final.items()},
            "chance": m.task.chance}


def is_evaluated(run: Run) -> bool:
    """Whether `evaluate_run` has run since the run's last checkpoint."""
    return is_fresh(run, summary_path(run))
