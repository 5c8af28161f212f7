"""Out-of-context reasoning, measured at every checkpoint: accuracy on each split of the task
(trained facts, held-out inferences, the in-context control, ...) and the loss of the right
answer, written into the run's tidy metrics table as `oocr.accuracy.{split}` and
`oocr.loss.{split}`; grokking shows as a held-out accuracy that rises long after the trained one."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from icl_lab.data.oocr import OOCRTask, build_task
from icl_lab.errors import ConfigError
from icl_lab.io import write_json
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights

PREFIX = "oocr."
Progress = Callable[[str, int, int], None]


def task_of(run: Run) -> OOCRTask:
    """The run's out-of-context reasoning task.

    Raises:
        ConfigError: the run trained on something else.
    """
    if run.config.data.kind != "oocr":
        raise ConfigError(f"{run.path} is not an out-of-context reasoning run (data.kind={run.config.data.kind!r}); "
                          "train one with `icl-lab oocr TASK`")
    return build_task(run.config.data.oocr)


@torch.inference_mode()
def greedy(model: Transformer, prompts: Int[Tensor, "n prompt"], n_new: int) -> Int[Tensor, "n n_new"]:
    """Greedy decoding of `n_new` tokens after each prompt (all prompts have one length)."""
    tokens = prompts
    for _ in range(n_new):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[:, prompts.shape[1] :]


@torch.inference_mode()
def split_scores(model: Transformer, task: OOCRTask) -> dict[str, dict[str, float]]:
    """Per split: `accuracy` (greedy decoding gets the final answer token right) and `loss` (of
    the final answer token, with the earlier answer tokens given)."""
    out = {}
    for name, (prompts, answers) in task.splits.items():
        if len(prompts) == 0:
            continue
        decoded = greedy(model, prompts, answers.shape[1])
        full = torch.cat([prompts, answers], dim=1)
        logits = model(full[:, :-1])[:, -1]  # predicts the final answer token
        out[name] = {"accuracy": float((decoded[:, -1] == answers[:, -1]).float().mean()),
                     "loss": float(F.cross_entropy(logits, answers[:, -1]))}
    return out


def evaluate_run(run: Run, progress: Progress | None = None) -> dict:
    """Score every checkpoint of an out-of-context reasoning run, add the rows to its metrics
    table (replacing earlier `oocr.` rows; other rows stay) and write `analysis/oocr.json`.

    Returns:
        `{task, run, step, splits: {split: accuracy}, loss: {split: loss}, chance}` at the last
        checkpoint.
    """
    task = task_of(run)
    cfg = run.config
    model = Transformer(cfg.model)
    rows = []
    steps = run.checkpoints
    for i, step in enumerate(steps):
        model.load_state_dict(load_weights(run.layout.checkpoint(step)))
        scores = split_scores(model.eval(), task)
        base = {"run": run.path.name, "step": step, "tokens": step * cfg.train.batch_size * cfg.model.n_ctx}
        for split, values in scores.items():
            rows += [{**base, "metric": f"{PREFIX}{k}.{split}", "value": v} for k, v in values.items()]
        if progress is not None:
            progress(run.path.name, i + 1, len(steps))
    table = pd.DataFrame(rows)
    stored = run.store.read(["metric"]).metric.unique() if run.store.exists() else []
    run.store.write(table, clear={m for m in stored if m.startswith(PREFIX)} | set(table.metric))
    summary = {"task": cfg.data.oocr.task, "run": str(run.path), "step": steps[-1],
               "splits": {s: v["accuracy"] for s, v in scores.items()}, "loss": {s: v["loss"] for s, v in scores.items()},
               "chance": task.chance}
    write_json(run.layout.oocr, summary)
    return summary


def is_evaluated(run: Run) -> bool:
    """Whether `evaluate_run` has run since the run's last checkpoint."""
    path = run.layout.oocr
    steps = run.checkpoints
    return bool(steps) and path.is_file() and path.stat().st_mtime >= run.layout.checkpoint(steps[-1]).stat().st_mtime
