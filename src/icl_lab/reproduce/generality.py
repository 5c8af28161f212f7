"""Argument 4: the heads that are induction heads on literal repeats also do in-context tasks whose
copy is not literal (translation, fuzzy copying, few-shot pattern matching; `icl_lab.data.tasks`),
in a model trained on a mixture of all four."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from icl_lab.data.tasks import TASKS, TaskBatch, sample_task
from icl_lab.intervene.ablate import ablate_head_group, ablate_heads, all_heads
from icl_lab.measure.head_scores import attention_patterns
from icl_lab.reproduce.family import Lab
from icl_lab.reproduce.readout import LAYOUT, inductive
from icl_lab.reproduce.verdict import Section, check
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run

# thresholds, fixed before any run
SOURCE_ATTENTION = 0.2  # attention an induction head pays the right sources
OTHER_HEAD_RATIO = 2.0  # ... and how many times more than the best other head
LOSS_INCREASE = 0.2  # nats the task loss rises when the induction heads are ablated
TASK_SEED = 4  # evaluation sequences are drawn from this seed, apart from the training stream


def task_batch(run: Run, task: str, n_examples: int) -> TaskBatch:
    """`n_examples` evaluation sequences of `task` for `run`'s vocabulary and context."""
    cfg = run.config
    return sample_task(task, cfg.model.d_vocab, cfg.model.n_ctx, n_examples, torch.Generator().manual_seed(TASK_SEED),
                       cfg.data.min_period, cfg.data.max_period)


@torch.inference_mode()
def task_effects(model: Transformer, batch: TaskBatch, induction: list[tuple[int, int]]) -> dict:
    """For every head: mean attention to the right sources over the batch's in-context targets,
    and the rise in loss on those targets when the head is zero-ablated (pattern-preserving); and
    the rise when the `induction` heads are ablated together (NaN without any).

    Returns:
        {"attention": {(layer, head): float}, "rise": {(layer, head): float}, "group_rise": float,
        "clean_loss": float}
    """
    targets = batch.target_mask  # [batch, pos-1]
    patterns = attention_patterns(model, batch.tokens)[..., :-1, :]  # [layer, batch, head, query, key]: queries with a target
    on_source = (patterns * batch.sources[None, :, None].float()).sum(-1)  # [layer, batch, head, query]
    mask = targets[None, :, None].float()
    attention = (on_source * mask).sum((1, 3)) / mask.sum((1, 3)).clamp(min=1)  # [layer, head]
    heads = all_heads(model)
    losses = ablate_heads(model, batch.tokens, heads=heads, kind="zero", pattern_preserving=True)  # [1 + head, batch, pos-1]
    clean = float(losses[0][targets].mean())
    rise = {h: float(losses[i + 1][targets].mean()) - clean for i, h in enumerate(heads)}
    group = math.nan
    if induction:
        group = float(ablate_head_group(model, batch.tokens, induction)[1][targets].mean()) - clean
    return {"attention": {h: float(attention[h]) for h in heads}, "rise": rise, "group_rise": group, "clean_loss": clean}


def argument_4(lab: Lab) -> Section:
    arg = "argument-4"
    sec = Section(arg, "Generality", "Induction heads also do in-context learning that is not literal copying: "
                  "translating, copying near-equivalents and completing abstract patterns.")
    run = lab.run("mixture-2l-4h")
    ind = inductive(run)
    model = run.model()
    names = ", ".join(f"L{l}H{h}" for l, h in ind) or "none"
    effects = {}
    for task in TASKS:
        lab.log(f"argument 4: {task} task")
        e = effects[task] = task_effects(model, task_batch(run, task, lab.scale.n_examples), ind)
        top = max(ind, key=lambda h: e["attention"][h]) if ind else None
        mine = e["attention"][top] if top else math.nan
        others = [v for h, v in e["attention"].items() if h not in ind]
        other_rise = [v for h, v in e["rise"].items() if h not in ind]
        sec.checks += [
            check(arg, f"{task}: the induction heads attend to the right source",
                  f"{task}: attention of the best of {names} to the source", mine, ">=", SOURCE_ATTENTION),
            check(arg, f"{task}: the induction heads attend to it more than any other head",
                  f"{task}: that attention / the best other head's", mine / max(max(others, default=0.0), 1e-9), ">=", OTHER_HEAD_RATIO),
            check(arg, f"{task}: ablating the induction heads hurts the task",
                  f"{task}: loss rise on in-context targets with {names} ablated (nats)", e["group_rise"], ">=", LOSS_INCREASE),
            check(arg, f"{task}: ablating them hurts more than ablating any other head",
                  f"{task}: that rise / the largest other single-head rise",
                  e["group_rise"] / max(max(other_rise, default=0.0), 1e-9), ">=", OTHER_HEAD_RATIO),
        ]
    sec.figures["a4-tasks"] = _figure(effects, ind)
    sec.notes.append(f"Model: mixture-2l-4h, trained on literal repeats, translation, fuzzy copying and pattern matching in equal "
                     f"shares. Its induction heads, found on literal repeated random tokens: {names}. Clean losses on the "
                     "in-context targets: " + ", ".join(f"{t} {e['clean_loss']:.2f}" for t, e in effects.items()) + " nats.")
    return sec


def _figure(effects: dict, ind: list[tuple[int, int]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("attention to the right source", "loss rise when the head is ablated (nats)"))
    heads = list(next(iter(effects.values()))["attention"])
    labels = [f"L{l}H{h}{' *' if (l, h) in ind else ''}" for l, h in heads]
    for i, (task, e) in enumerate(effects.items()):
        colour = ["#1f77b4", "#ff7f0e", "#2ca02c"][i % 3]
        fig.add_bar(x=labels, y=[e["attention"][h] for h in heads], name=task, marker_color=colour, legendgroup=task, row=1, col=1)
        fig.add_bar(x=labels, y=[e["rise"][h] for h in heads], name=task, marker_color=colour, legendgroup=task,
                    showlegend=False, row=1, col=2)
    fig.update_layout(title="Which heads do each task (* induction head on literal repeats)", barmode="group", height=420, **LAYOUT)
    return fig

