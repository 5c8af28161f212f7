"""`analyze`: the paper's measurements at every checkpoint of one or more runs, written as a tidy
Parquet table and a JSON summary into each run's `analysis/` folder.

Per checkpoint: the loss and ICL score on a fixed evaluation set (the same for every checkpoint and
every run analysed together), loss and dLoss/d ln(position) by token index, one per-token-loss
vector (one fixed random token per evaluation example), and every head's prefix-matching,
previous-token, duplicate-token, copying and OV-eigenvalue-positivity scores, each next to the
same score of a randomly initialised model. Then a PCA fitted jointly over all checkpoints of all
runs, and phase-change detection per run (`icl_lab.measure.phase`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from icl_lab.data.synthetic import sample_batch
from icl_lab.data.text import load_tokens, sample_windows
from icl_lab.errors import ConfigError
from icl_lab.io import atomic_write, write_json
from icl_lab.measure.circuits import copying_scores, ov_eigen_positivity
from icl_lab.measure.head_scores import (
    duplicate_token_mask,
    masked_pattern_scores,
    prefix_matching_mask,
    previous_token_mask,
    repeated_random_tokens,
)
from icl_lab.measure.losses import dloss_dlnpos, icl_positions, icl_score, loss_by_token, per_token_losses
from icl_lab.measure.pca import before_after_vector, joint_pca
from icl_lab.measure.phase import detect_phase_change
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights

EVAL_SEED = 20220308  # fixed: every checkpoint of every run sees the same evaluation tokens
HEAD_METRICS = ("prefix_matching", "previous_token", "duplicate_token", "copying", "ov_eigen_positivity")
INDUCTION_THRESHOLDS = {"prefix_matching": 0.5, "copying": 0.5}
MIN_PHASE_CHECKPOINTS = 4

Progress = Callable[[str, int, int], None]  # (run name, checkpoints done, total)


@dataclass(frozen=True)
class EvalSet:
    tokens: torch.Tensor  # [example, pos]: evaluation sequences
    ptl_positions: torch.Tensor  # [example]: the per-token-loss index sampled for each example
    repeated: torch.Tensor  # [example, pos]: repeated random tokens for the pattern scores
    seg_len: int


def rare_and_common_tokens(tokens: torch.Tensor, d_vocab: int, fraction: float = 0.1) -> list[int]:
    """The `fraction` most and `fraction` least common token ids in `tokens` (ties broken by id),
    which the paper leaves out of the repeated random sequences."""
    counts = torch.bincount(tokens.flatten(), minlength=d_vocab).float()
    order = torch.argsort(counts + torch.arange(d_vocab) * 1e-6, stable=True)  # rarest first
    k = int(fraction * d_vocab)
    return sorted(set(order[:k].tolist()) | set(order[d_vocab - k :].tolist())) if k else []


def eval_tokens(run: Run, n_examples: int, gen: torch.Generator) -> torch.Tensor:
    """[example, pos] evaluation sequences: windows of the validation split for text runs,
    fresh synthetic sequences otherwise."""
    cfg = run.config
    n_ctx = eval_context(run)
    if cfg.data.kind == "text":
        return sample_windows(load_tokens(cfg.data, cfg.model.d_vocab).val, n_ctx, n_examples, gen).tokens
    return sample_batch(cfg.data, cfg.model.d_vocab, n_ctx, n_examples, gen).tokens


def eval_context(run: Run) -> int:
    """Length of the evaluation windows: data.eval_ctx, else the model's context."""
    return min(run.config.data.eval_ctx or run.config.model.n_ctx, run.config.model.n_ctx)


def make_eval_set(run: Run, n_examples: int = 256) -> EvalSet:
    """The fixed evaluation set for `run`'s model shape and data, from a fixed seed (text runs:
    windows of the validation split). Its repeated random sequences avoid token 0 (BOS, or a
    text tokenizer's end-of-text) and the 10% most and least common tokens of the evaluation text."""
    cfg = run.config
    gen = torch.Generator().manual_seed(EVAL_SEED)
    tokens = eval_tokens(run, n_examples, gen)
    positions = torch.randint(0, tokens.shape[1] - 1, (n_examples,), generator=gen)
    exclude = sorted({0, *rare_and_common_tokens(tokens, cfg.model.d_vocab)})
    repeated, seg_len = repeated_random_tokens(cfg.model.d_vocab, tokens.shape[1], seed=EVAL_SEED, exclude=exclude)
    return EvalSet(tokens, positions, repeated, seg_len)


def head_scores(model: Transformer, ev: EvalSet) -> dict[str, torch.Tensor]:
    """Every head score of `model`, each [layer, head]."""
    n_rep = ev.repeated.shape[1]
    return {
        "prefix_matching": masked_pattern_scores(model, ev.repeated, prefix_matching_mask(n_rep, ev.seg_len)),
        "duplicate_token": masked_pattern_scores(model, ev.repeated, duplicate_token_mask(n_rep, ev.seg_len)),
        "previous_token": masked_pattern_scores(model, ev.tokens[:32], previous_token_mask(ev.tokens.shape[1])),
        "copying": copying_scores(model),
        "ov_eigen_positivity": ov_eigen_positivity(model),
    }


def _head_rows(scores: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor], base: dict) -> list[dict]:
    rows = []
    for metric, values in scores.items():
        for (layer, head), v in np.ndenumerate(values.numpy()):
            rows.append({**base, "metric": metric, "layer": layer, "head": head, "value": float(v),
                         "baseline": float(baseline[metric][layer, head])})
    return rows


def _analyze_run(run: Run, ev: EvalSet, progress: Progress | None) -> tuple[list[dict], np.ndarray]:
    cfg = run.config
    tokens_per_step = cfg.train.batch_size * cfg.model.n_ctx
    model = Transformer(cfg.model)
    baseline = head_scores(Transformer(cfg.model, seed=EVAL_SEED).eval(), ev)
    rows, vectors = [], []
    steps = run.checkpoints
    for i, step in enumerate(steps):
        model.load_state_dict(load_weights(run.layout.checkpoint(step)))
        model.eval()
        base = {"run": run.path.name, "step": step, "tokens": step * tokens_per_step}
        per_token = per_token_losses(model, ev.tokens)  # [example, pos-1]
        by_token = loss_by_token(per_token)
        rows.append({**base, "metric": "loss", "value": float(per_token.mean())})
        rows.append({**base, "metric": "icl_score", "value": icl_score(by_token)})
        rows += [{**base, "metric": "loss_by_position", "position": t, "value": float(v)} for t, v in enumerate(by_token.tolist()) if t > 0]
        rows += [{**base, "metric": "dloss_dlnpos", "position": t + 1, "value": float(v)} for t, v in enumerate(dloss_dlnpos(by_token))]
        rows += _head_rows(head_scores(model, ev), baseline, base)
        vectors.append(per_token[torch.arange(len(per_token)), ev.ptl_positions].numpy())
        if progress is not None:
            progress(run.path.name, i + 1, len(steps))
    return rows, np.stack(vectors)


def _summary(run: Run, table: pd.DataFrame) -> dict:
    series = table.pivot_table(index="tokens", columns="metric", values="value", aggfunc="max")
    series = series[series.index > 0]
    if len(series) >= MIN_PHASE_CHECKPOINTS:
        phase = detect_phase_change(series.index.to_numpy(float), series["icl_score"].to_numpy(),
                                    series["prefix_matching"].to_numpy(), series["loss"].to_numpy())
    else:  # e.g. one imported pretrained checkpoint: the scores stand, a transition cannot be seen
        phase = {"detected": False, "start_tokens": None, "end_tokens": None, "loss_bump": None, "overlap": None,
                 "coincide": False, "icl_window": None, "prefix_matching_window": None,
                 "reason": f"{len(series)} checkpoints after step 0; detecting a phase change needs {MIN_PHASE_CHECKPOINTS}"}
    icl = table[table.metric == "icl_score"].sort_values("step")
    final = table[(table.step == table.step.max()) & table.metric.isin(HEAD_METRICS)]
    heads = final.pivot_table(index=["layer", "head"], columns="metric", values="value").reset_index()
    head_records = [{"layer": int(r["layer"]), "head": int(r["head"]), **{m: float(r[m]) for m in HEAD_METRICS}}
                    for _, r in heads.iterrows()]
    early, late = icl_positions(eval_context(run))
    return {
        "run": str(run.path),
        "phase_change": phase,
        "icl_score": {"initial": float(icl.value.iloc[0]), "final": float(icl.value.iloc[-1]),
                      "early_token": early, "late_token": late},
        "heads": head_records,
        "induction_heads": [{"layer": h["layer"], "head": h["head"]} for h in head_records
                            if all(h[m] > t for m, t in INDUCTION_THRESHOLDS.items())],
    }


def is_analysed(runs: Sequence[Run], n_examples: int = 256) -> bool:
    """Whether `analyze(runs, n_examples)` has already run on exactly these runs together, after
    their latest checkpoints: rerunning it would rewrite the same tables."""
    names = [str(r.path) for r in runs]
    for run in runs:
        steps = run.checkpoints
        if not run.layout.summary.is_file() or not steps:
            return False
        summary = run.summary()
        if summary.get("pca", {}).get("runs") != names or summary.get("n_examples") != n_examples:
            return False
        if run.layout.summary.stat().st_mtime < run.layout.checkpoint(steps[-1]).stat().st_mtime:
            return False
    return True


def analyze(runs: Sequence[Run], n_examples: int = 256, progress: Progress | None = None, write: bool = True) -> dict[str, dict]:
    """Measure every checkpoint of `runs` and (by default) write each run's `analysis/` folder.

    Args:
        runs: runs with the same d_vocab and n_ctx; the first run's data defines the shared
            evaluation set, so all runs' per-token-loss vectors live in one PCA space.
        n_examples: evaluation sequences.
        progress: optional callback(run name, checkpoints done, total).
        write: write metrics.parquet, summary.json and before_after.json into each run.

    Returns:
        Run path -> summary dict (keys documented in docs/analysis.md).

    Raises:
        ConfigError: runs of different shapes, or a run without checkpoints. (Phase-change
            detection needs 4 checkpoints after step 0; with fewer, the summary says why.)
    """
    if not runs:
        raise ConfigError("analyze needs at least one run directory")
    shape = {(r.config.model.d_vocab, eval_context(r)) for r in runs}
    if len(shape) > 1:
        raise ConfigError(f"runs differ in (d_vocab, n_ctx): {sorted(shape)}; analyze runs of one shape together")
    for r in runs:
        if r.config.data.kind == "oocr":
            raise ConfigError(f"{r.path} is an out-of-context reasoning run, which has no in-context-learning analysis; "
                              "score it with `icl-lab oocr`")
        if not r.checkpoints:
            raise ConfigError(f"{r.path} has no checkpoints yet; train it first")
    ev = make_eval_set(runs[0], n_examples)
    tables, vectors = [], []
    with torch.inference_mode():
        for run in runs:
            rows, vecs = _analyze_run(run, ev, progress)
            tables.append(pd.DataFrame(rows))
            vectors.append(vecs)
    proj, explained = joint_pca(np.concatenate(vectors))
    summaries, offset = {}, 0
    for run, table, vecs in zip(runs, tables, vectors):
        steps = run.checkpoints
        coords = proj[offset : offset + len(steps)]
        offset += len(steps)
        tokens = {s: s * run.config.train.batch_size * run.config.model.n_ctx for s in steps}
        pca_rows = [{"run": run.path.name, "step": s, "tokens": tokens[s], "metric": f"pca_{k + 1}", "value": float(c[k])}
                    for s, c in zip(steps, coords) for k in range(coords.shape[1])]
        table = pd.concat([table, pd.DataFrame(pca_rows)], ignore_index=True)
        table = table.astype({"layer": "Int64", "head": "Int64", "position": "Int64"}, errors="ignore")
        summary = _summary(run, table)
        summary["pca"] = {"explained_variance": explained.tolist(), "runs": [str(r.path) for r in runs]}
        summary["n_examples"] = n_examples
        summaries[str(run.path)] = summary
        if write:
            _write(run, table, summary, vecs, steps, tokens)
    return summaries


def _write(run: Run, table: pd.DataFrame, summary: dict, vecs: np.ndarray, steps: list[int], tokens: dict[int, int]) -> None:
    layout = run.layout
    for col in ("layer", "head", "position", "baseline"):
        if col not in table:
            table[col] = pd.NA
    table = table[["run", "step", "tokens", "metric", "layer", "head", "position", "value", "baseline"]]
    if layout.metrics.is_file():  # keep rows other stages added (e.g. `icl-lab ablate`): nothing written is lost
        old = pd.read_parquet(layout.metrics)
        old = old[~old.metric.isin(set(table.metric))]
        if len(old):
            table = pd.concat([table, old[table.columns]], ignore_index=True)
    atomic_write(layout.metrics, lambda p: table.to_parquet(p, index=False))
    phase = summary["phase_change"]
    if phase["detected"]:
        by_tokens = {tokens[s]: i for i, s in enumerate(steps)}
        start, end = by_tokens[int(phase["start_tokens"])], by_tokens[int(phase["end_tokens"])]
        write_json(layout.before_after, {"start_step": steps[start], "end_step": steps[end],
                                         "vector": before_after_vector(vecs[start], vecs[end]).tolist()})
    else:
        layout.before_after.unlink(missing_ok=True)
    write_json(layout.summary, summary)
