"""Gather what a report shows from run directories: the training log, the analysis tables, the
ablation attributions, attention patterns at a spread of checkpoints and the final composition
scores. Everything here reads a run (and recomputes patterns from checkpoints); nothing is
written. A run that has not been analysed yet still gets its loss curve and attention viewer.

Example:
    >>> data = collect_run(icl_lab.load_run("runs/demo/synthetic-2l"))
    >>> data.attention.steps, data.attention.patterns.shape  # [step, sample, layer, head, query_pos, key_pos]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from icl_lab.data.oocr import PAD, build_task, token_label
from icl_lab.data.synthetic import sample_batch
from icl_lab.data.text import load_tokens, sample_windows
from icl_lab.errors import CheckpointError
from icl_lab.intervene.attribution import PREFIX, ablation_summary
from icl_lab.measure.analyze import EVAL_SEED
from icl_lab.measure.composition import composition_baseline, composition_scores
from icl_lab.measure.head_scores import attention_patterns, repeated_random_tokens
from icl_lab.measure.placement import place
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights

VIEW_POSITIONS = 64  # the attention viewer shows at most this many tokens per sample
VIEW_CHECKPOINTS = 16  # and this many checkpoints on its slider
EDGE_Z = 2.0  # a composition edge is drawn when its score is this many baseline stds above the mean
LIVE_SECONDS = 120  # a run whose status is "running" and whose log moved this recently is training


@dataclass(frozen=True)
class Attention:
    """Attention patterns for the viewer.

    Attributes:
        steps: checkpoint steps on the slider.
        tokens: tokens of each step (for the slider label).
        samples: one dict per sample: `{"name", "tokens": [str, ...]}`.
        patterns: uint8 [step, sample, layer, head, query_pos, key_pos], attention x 255 rounded.
    """

    steps: list[int]
    tokens: list[int]
    samples: list[dict]
    patterns: np.ndarray


@dataclass(frozen=True)
class RunData:
    """One run's report inputs. `metrics`, `summary` and `ablation` are None before `analyze` /
    `ablate` ran; `composition` is None for one-layer models (nothing to compose). `oocr` holds an
    out-of-context reasoning run's `analysis/oocr.json` plus its accuracy table (`"accuracy"`:
    step, tokens, split, value), once `icl-lab oocr` scored it."""

    name: str
    path: str
    description: str
    training: bool
    log: pd.DataFrame
    metrics: pd.DataFrame | None
    summary: dict | None
    ablation: dict | None
    attention: Attention | None
    composition: dict | None
    oocr: dict | None = None


def describe(run: Run) -> str:
    """One line: layers, width, heads, attention-only or MLP, positions, data, steps."""
    m, t = run.config.model, run.config.train
    kind = "attention-only" if m.attn_only else f"MLP {m.d_mlp}"
    extras = ", smeared keys" if m.smeared_key else ""
    return (f"{m.n_layers} layer{'s' * (m.n_layers > 1)}, d_model {m.d_model}, {m.n_heads} head{'s' * (m.n_heads > 1)}, "
            f"{kind}, {m.positional} positions{extras}; vocab {m.d_vocab}, context {m.n_ctx}; "
            f"{run.config.data.kind} data; {t.steps:,} steps x {t.batch_size} x {m.n_ctx} tokens")


def is_training(run: Run) -> bool:
    """Whether the run's trainer looks alive: status "running" and a log written recently."""
    log = run.layout.log
    return run.meta.get("status") == "running" and log.is_file() and time.time() - log.stat().st_mtime < LIVE_SECONDS


def view_steps(steps: list[int], keep: tuple[int, ...] = (), n: int = VIEW_CHECKPOINTS) -> list[int]:
    """Up to `n` checkpoints spread evenly on a log axis (always the first and last), plus `keep`."""
    if len(steps) <= n:
        return list(steps)
    idx = np.unique(np.round(np.geomspace(1, len(steps), n)).astype(int) - 1)
    return sorted({steps[i] for i in idx} | {s for s in keep if s in steps})


def _oocr_samples(run: Run) -> tuple[torch.Tensor, list[dict]]:
    """One query of each split, with its answer, padded to the model's context."""
    task = build_task(run.config.data.oocr)
    m = run.config.model
    rows, samples = [], []
    for name, (prompts, answers) in task.splits.items():
        if len(prompts):
            row = torch.cat([prompts[0], answers[0]]).tolist()
            rows.append(row + [PAD] * (m.n_ctx - len(row)))
            samples.append({"name": f"{name} query and answer", "tokens": [token_label(task, t) for t in rows[-1]]})
    return torch.tensor(rows), samples


def _samples(run: Run) -> tuple[torch.Tensor, list[dict]]:
    """Two viewer sequences of equal length: repeated random tokens, and a sample of the run's
    data (for text runs, a validation window shown as decoded tokens). Out-of-context reasoning
    runs show one query of each split instead."""
    if run.config.data.kind == "oocr":
        return _oocr_samples(run)
    m = run.config.model
    n = min(m.n_ctx, VIEW_POSITIONS)
    rep, seg = repeated_random_tokens(m.d_vocab, n, n_repeats=3, n_examples=1, seed=EVAL_SEED)
    gen = torch.Generator().manual_seed(EVAL_SEED + 1)
    tokenizer = run.tokenizer()
    if run.config.data.kind == "text":
        ts = load_tokens(run.config.data, m.d_vocab)
        text = sample_windows(ts.val, n, 1, gen, bos=ts.bos).tokens
        name = f"validation text ({run.config.data.corpus}, {run.config.data.tokenizer} tokens)"
    else:
        text = sample_batch(run.config.data, m.d_vocab, n, 1, gen).tokens
        name = f"training-data sample ({run.config.data.kind})"
    length = min(rep.shape[1], text.shape[1])
    tokens = torch.cat([rep[:, :length], text[:, :length]])  # [sample, pos]
    if tokenizer is not None:
        labels = [tokenizer.token_strings(row) for row in tokens.tolist()]
    else:
        labels = [["BOS" if t == 0 and run.config.data.bos else str(t) for t in row] for row in tokens.tolist()]
    return tokens, [{"name": f"repeated random tokens (segment of {seg}, 3 copies)", "tokens": labels[0]},
                    {"name": name, "tokens": labels[1]}]


@torch.inference_mode()
def collect_attention(run: Run, keep: tuple[int, ...] = (), device: str | None = None, dtype: str | None = None) -> Attention | None:
    """Attention patterns of every head on the viewer samples at up to `VIEW_CHECKPOINTS` steps."""
    steps = view_steps(run.checkpoints, keep)
    if not steps:
        return None
    tokens, samples = _samples(run)
    model = place(run.model(steps[0]), device, dtype)
    out = []
    for step in steps:
        model.load_state_dict(load_weights(run.layout.checkpoint(step)))
        pattern = attention_patterns(model, tokens)  # [layer, sample, head, query_pos, key_pos]
        out.append(pattern.float().cpu().transpose(0, 1).mul(255).round().to(torch.uint8).numpy())
    per_step = run.config.train.batch_size * run.config.model.n_ctx
    return Attention(steps, [s * per_step for s in steps], samples, np.stack(out))


@torch.inference_mode()
def collect_composition(run: Run, device: str | None = None, dtype: str | None = None) -> dict | None:
    """Q/K/V-composition scores of the final checkpoint against their random baseline: every
    earlier-head -> later-head pair as an edge record, `drawn` when z >= EDGE_Z. None for one-layer
    models. The scores go through the factored circuits, so GPT-2-sized models take seconds."""
    m = run.config.model
    if m.n_layers < 2 or not run.checkpoints:
        return None
    model = place(run.model(), device, dtype)
    edges, baselines = [], {}
    for mode in ("q", "k", "v"):
        mean, std = composition_baseline(model, mode)
        baselines[mode] = {"mean": mean, "std": std}
        scores = composition_scores(model, mode).float().cpu().numpy()  # [layer_a, head_a, layer_b, head_b], NaN if not earlier
        for (la, ha, lb, hb), s in np.ndenumerate(scores):
            if np.isfinite(s):
                z = (s - mean) / std
                edges.append({"source": [la, ha], "target": [lb, hb], "mode": mode, "score": float(s),
                              "z": float(z), "drawn": bool(z >= EDGE_Z)})
    return {"step": run.checkpoints[-1], "edges": edges, "baselines": baselines, "edge_z": EDGE_Z}


def _phase_steps(run: Run, summary: dict | None) -> tuple[int, ...]:
    if not summary or not summary["phase_change"]["detected"]:
        return ()
    per_step = run.config.train.batch_size * run.config.model.n_ctx
    pc = summary["phase_change"]
    return tuple(int(pc[k] // per_step) for k in ("start_tokens", "end_tokens"))


def collect_oocr(run: Run) -> dict | None:
    """An out-of-context reasoning run's summary and per-checkpoint accuracy, once scored."""
    if not run.layout.oocr.is_file():
        return None
    table = run.store.read(["step", "tokens", "metric", "value"])
    table = table[table.metric.str.startswith("oocr.accuracy.")].copy()
    table["split"] = table.metric.str.removeprefix("oocr.accuracy.")
    return {**json.loads(run.layout.oocr.read_text()), "accuracy": table.drop(columns="metric")}


def collect_run(run: Run, device: str | None = None, dtype: str | None = None) -> RunData:
    """Everything the report shows about `run` (models run on `device` in `dtype`)."""
    try:
        metrics, summary = run.metrics(), run.summary()
    except CheckpointError:
        metrics, summary = None, None
    ablation = None
    if metrics is not None and metrics.metric.str.startswith(PREFIX).any():
        ablation = ablation_summary(run, metrics)
    return RunData(
        name=run.path.name, path=str(run.path), description=describe(run), training=is_training(run),
        log=run.log, metrics=metrics, summary=summary, ablation=ablation,
        attention=collect_attention(run, keep=_phase_steps(run, summary), device=device, dtype=dtype),
        composition=collect_composition(run, device, dtype), oocr=collect_oocr(run),
    )
