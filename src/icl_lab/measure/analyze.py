"""`analyze`: the paper's measurements at every checkpoint of one or more runs, written as a tidy
Parquet table and a JSON summary into each run's `analysis/` folder.

Per checkpoint, on the run's own evaluation set (`icl_lab.measure.evalset`): the loss and ICL
score, loss and dLoss/d ln(position) by token index, one per-token-loss vector (one fixed random
token per evaluation example), and every head's prefix-matching, previous-token, duplicate-token,
copying (three forms) and OV-eigenvalue-positivity scores, each next to the same score of a
randomly initialised model. Every score averaged over examples carries a 95% bootstrap interval
(`lo`, `hi`). Then a PCA fitted jointly over the runs that share an evaluation set, phase-change
detection per run (`icl_lab.measure.phase`), and the induction heads by the one rule
(`icl_lab.measure.induction`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from icl_lab.errors import ConfigError
from icl_lab.io import write_json
from icl_lab.measure.circuits import ov_eigen_positivity
from icl_lab.measure.copying import copying_direct_scores, copying_olsson_scores, copying_scores
from icl_lab.measure.evalset import EVAL_SEED, EvalSet, eval_context, make_eval_set, save_eval_set
from icl_lab.measure.head_scores import duplicate_token_mask, masked_pattern_scores, prefix_matching_mask, previous_token_mask
from icl_lab.measure.induction import INDUCTION_THRESHOLDS, induction_heads, induction_rule
from icl_lab.measure.intervals import mean_interval
from icl_lab.measure.losses import dloss_dlnpos, icl_positions, loss_by_token, per_token_losses
from icl_lab.measure.pca import before_after_vector, joint_pca
from icl_lab.measure.phase import detect_phase_change
from icl_lab.measure.placement import place
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run, check_eval_data
from icl_lab.run.store import COLUMNS
from icl_lab.train.checkpoint import load_weights
from icl_lab.train.trainer import library_versions

HEAD_METRICS = ("prefix_matching", "previous_token", "duplicate_token", "copying", "copying_direct", "copying_olsson",
                "ov_eigen_positivity")
ANALYSIS_VERSION = 2  # bump when a definition changes: `--reuse` then redoes older analyses
MIN_PHASE_CHECKPOINTS = 4
PREVIOUS_TOKEN_EXAMPLES = 64

Progress = Callable[[str, int, int], None]  # (run name, checkpoints done, total)


def head_scores(model: Transformer, ev: EvalSet, per_example: bool = False) -> dict[str, torch.Tensor]:
    """Every head score of `model` on `ev`: [layer, head] each, or with `per_example` the
    example-averaged scores as [example, layer, head] (weights-only scores stay [layer, head])."""
    n_rep, first = ev.repeated.shape[1], ev.first
    scores = {
        "prefix_matching": masked_pattern_scores(model, ev.repeated, prefix_matching_mask(n_rep, ev.seg_len, first), per_example=True),
        "previous_token": masked_pattern_scores(model, ev.tokens[:PREVIOUS_TOKEN_EXAMPLES], previous_token_mask(ev.tokens.shape[1]),
                                                per_example=True),
        "duplicate_token": masked_pattern_scores(model, ev.repeated, duplicate_token_mask(n_rep, ev.seg_len, first), per_example=True),
        "copying": copying_scores(model, ev.repeated, first=first, per_example=True),
        "copying_direct": copying_direct_scores(model),
        "copying_olsson": copying_olsson_scores(model, ev.random, first=first, per_example=True),
        "ov_eigen_positivity": ov_eigen_positivity(model),
    }
    return scores if per_example else {m: (v.mean(0) if v.ndim == 3 else v) for m, v in scores.items()}


def _head_rows(scores: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor], base: dict) -> list[dict]:
    rows = []
    for metric, per in scores.items():
        values = per.mean(0) if per.ndim == 3 else per
        lo, hi = mean_interval(per) if per.ndim == 3 else (np.full(values.shape, np.nan),) * 2
        for (layer, head), v in np.ndenumerate(values.numpy()):
            rows.append({**base, "metric": metric, "layer": layer, "head": head, "value": float(v),
                         "baseline": float(baseline[metric][layer, head]), "lo": float(lo[layer, head]), "hi": float(hi[layer, head])})
    return rows


def measure_checkpoint(model: Transformer, ev: EvalSet, baseline: dict[str, torch.Tensor], base: dict) -> tuple[list[dict], np.ndarray]:
    """The table rows of one checkpoint (`base` holds run, step, tokens) and its per-token-loss vector."""
    per_token = per_token_losses(model, ev.tokens).float()  # [example, pos-1]
    by_token = loss_by_token(per_token)
    early, late = icl_positions(ev.tokens.shape[1])
    icl = per_token[:, late - 1] - per_token[:, early - 1]  # [example], the ICL score per example
    rows = []
    for metric, per in (("loss", per_token.mean(1)), ("icl_score", icl)):
        lo, hi = mean_interval(per)
        rows.append({**base, "metric": metric, "value": float(per.mean()), "lo": float(lo), "hi": float(hi)})
    rows += [{**base, "metric": "loss_by_position", "position": t, "value": float(v)} for t, v in enumerate(by_token.tolist()) if t > 0]
    rows += [{**base, "metric": "dloss_dlnpos", "position": t + 1, "value": float(v)} for t, v in enumerate(dloss_dlnpos(by_token))]
    rows += _head_rows(head_scores(model, ev, per_example=True), baseline, base)
    return rows, per_token[torch.arange(len(per_token)), ev.ptl_positions].numpy()


def _analyze_run(run: Run, ev: EvalSet, progress: Progress | None, device: str | None, dtype: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    cfg = run.config
    tokens_per_step = cfg.train.batch_size * cfg.model.n_ctx
    model = place(Transformer(cfg.model), device, dtype)
    baseline = head_scores(place(Transformer(cfg.model, seed=EVAL_SEED), device, dtype), ev)
    rows, vectors = [], []
    steps = run.checkpoints
    for i, step in enumerate(steps):
        model.load_state_dict(load_weights(run.layout.checkpoint(step)))
        r, v = measure_checkpoint(model, ev, baseline, {"run": run.path.name, "step": step, "tokens": step * tokens_per_step})
        rows += r
        vectors.append(v)
        if progress is not None:
            progress(run.path.name, i + 1, len(steps))
    return pd.DataFrame(rows), np.stack(vectors)


def _phase(table: pd.DataFrame) -> dict:
    series = table.pivot_table(index="tokens", columns="metric", values="value", aggfunc="max")
    series = series[series.index > 0]
    if len(series) >= MIN_PHASE_CHECKPOINTS:
        return detect_phase_change(series.index.to_numpy(float), series["icl_score"].to_numpy(),
                                   series["prefix_matching"].to_numpy(), series["loss"].to_numpy())
    # e.g. one imported pretrained checkpoint: the scores stand, a transition cannot be seen
    return {"detected": False, "start_tokens": None, "end_tokens": None, "loss_bump": None, "overlap": None,
            "coincide": False, "icl_window": None, "prefix_matching_window": None,
            "reason": f"{len(series)} checkpoints after step 0; detecting a phase change needs {MIN_PHASE_CHECKPOINTS}"}


def _summary(run: Run, table: pd.DataFrame, ev: EvalSet) -> dict:
    icl = table[table.metric == "icl_score"].sort_values("step")
    final = table[(table.step == table.step.max()) & table.metric.isin(HEAD_METRICS)]
    head_records = []
    for (layer, head), g in final.groupby(["layer", "head"]):
        g = g.set_index("metric")
        head_records.append({"layer": int(layer), "head": int(head), **{m: float(g.value[m]) for m in HEAD_METRICS},
                             "ci": {m: [float(g.lo[m]), float(g.hi[m])] for m in HEAD_METRICS if not np.isnan(g.lo[m])}})
    early, late = icl_positions(eval_context(run))
    last = icl.iloc[-1]
    return {
        "run": str(run.path),
        "phase_change": _phase(table),
        "icl_score": {"initial": float(icl.value.iloc[0]), "final": float(last.value), "final_ci": [float(last.lo), float(last.hi)],
                      "early_token": early, "late_token": late},
        "heads": head_records,
        "induction_heads": [{"layer": l, "head": h} for l, h in induction_heads(head_records)],
        "induction_rule": {"rule": induction_rule(), "thresholds": INDUCTION_THRESHOLDS},
        "provenance": {"versions": library_versions(), "analysis_version": ANALYSIS_VERSION,
                       "eval_set": ev.fingerprint, "eval_seed": EVAL_SEED, "bos": ev.bos,
                       "tokenizer": run.meta.get("tokenizer_fingerprint")},
    }


def _groups(runs: Sequence[Run], sets: dict[str, EvalSet]) -> dict[str, list[Run]]:
    """Runs grouped by evaluation-set fingerprint, each group sorted by path (so the joint PCA
    does not depend on the order the runs were given in)."""
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        groups.setdefault(sets[str(run.path)].fingerprint, []).append(run)
    return groups


def is_analysed(runs: Sequence[Run], n_examples: int = 256) -> bool:
    """Whether `analyze(runs, n_examples)` has already run on exactly these runs, with the current
    definitions, after their latest checkpoints: rerunning it would rewrite the same tables."""
    sets = {}
    for run in runs:
        steps = run.checkpoints
        if not run.layout.summary.is_file() or not run.layout.eval_set.is_file() or not steps:
            return False
        if run.layout.summary.stat().st_mtime < run.layout.checkpoint(steps[-1]).stat().st_mtime:
            return False
        sets[str(run.path)] = make_eval_set(run, n_examples)
    for fp, group in _groups(runs, sets).items():
        for run in group:
            s = run.summary()
            prov = s.get("provenance", {})
            if (prov.get("analysis_version") != ANALYSIS_VERSION or prov.get("eval_set") != fp
                    or s.get("pca", {}).get("runs") != [str(r.path) for r in group]):
                return False
    return True


def analyze(runs: Sequence[Run], n_examples: int = 256, progress: Progress | None = None, write: bool = True,
            device: str | None = None, dtype: str | None = None) -> dict[str, dict]:
    """Measure every checkpoint of `runs` and (by default) write each run's `analysis/` folder.

    Args:
        runs: runs to measure. Each is evaluated on its own evaluation set (its data and a fixed
            seed); runs whose sets are equal share one per-token-loss PCA space.
        n_examples: evaluation sequences.
        progress: optional callback(run name, checkpoints done, total).
        write: write metrics.parquet, summary.json, eval_set.safetensors and before_after.json.
        device, dtype: where to measure ("cpu", "cuda", "auto"; "fp32", "bf16", ...).

    Returns:
        Run path -> summary dict (keys documented in docs/analysis.md).

    Raises:
        ConfigError: a run without checkpoints, or an out-of-context reasoning run.
        DataError: a text run whose tokenizer or data no longer match what it was trained on.
    """
    if not runs:
        raise ConfigError("analyze needs at least one run directory")
    for r in runs:
        if r.config.data.kind == "oocr":
            raise ConfigError(f"{r.path} is an out-of-context reasoning run, which has no in-context-learning analysis; "
                              "score it with `icl-lab oocr`")
        if not r.checkpoints:
            raise ConfigError(f"{r.path} has no checkpoints yet; train it first")
        check_eval_data(r)
    sets = {str(r.path): make_eval_set(r, n_examples) for r in runs}
    summaries = {}
    with torch.inference_mode():
        for fp, group in _groups(runs, sets).items():
            measured = [(run, *_analyze_run(run, sets[str(run.path)], progress, device, dtype)) for run in group]
            proj, explained = joint_pca(np.concatenate([vecs for _, _, vecs in measured]))
            offset = 0
            for run, table, vecs in measured:
                steps = run.checkpoints
                coords, offset = proj[offset : offset + len(steps)], offset + len(steps)
                table = _with_pca(run, table, steps, coords)
                summary = _summary(run, table, sets[str(run.path)])
                summary["pca"] = {"explained_variance": explained.tolist(), "runs": [str(r.path) for r in group]}
                summary["n_examples"] = n_examples
                summaries[str(run.path)] = summary
                if write:
                    _write(run, table, summary, vecs, steps, sets[str(run.path)])
    return {str(r.path): summaries[str(r.path)] for r in runs}


def _with_pca(run: Run, table: pd.DataFrame, steps: list[int], coords: np.ndarray) -> pd.DataFrame:
    per_step = run.config.train.batch_size * run.config.model.n_ctx
    pca_rows = [{"run": run.path.name, "step": s, "tokens": s * per_step, "metric": f"pca_{k + 1}", "value": float(c[k])}
                for s, c in zip(steps, coords) for k in range(coords.shape[1])]
    table = pd.concat([table, pd.DataFrame(pca_rows)], ignore_index=True)
    for col in COLUMNS:
        if col not in table:
            table[col] = np.nan
    return table[COLUMNS].astype({"layer": "Int64", "head": "Int64", "position": "Int64"})


def _write(run: Run, table: pd.DataFrame, summary: dict, vecs: np.ndarray, steps: list[int], ev: EvalSet) -> None:
    layout = run.layout
    # replace this stage's metrics (every step), keep rows other stages added (e.g. `icl-lab ablate`)
    settings = {**summary["provenance"], "n_examples": len(ev.tokens), "induction_rule": summary["induction_rule"]}
    run.store.write(table, clear=set(table.metric), provenance={m: settings for m in table.metric.unique()})
    save_eval_set(run, ev)
    phase = summary["phase_change"]
    if phase["detected"]:
        per_step = run.config.train.batch_size * run.config.model.n_ctx
        by_tokens = {s * per_step: i for i, s in enumerate(steps)}
        start, end = by_tokens[int(phase["start_tokens"])], by_tokens[int(phase["end_tokens"])]
        write_json(layout.before_after, {"start_step": steps[start], "end_step": steps[end],
                                         "vector": before_after_vector(vecs[start], vecs[end]).tolist()})
    else:
        layout.before_after.unlink(missing_ok=True)
    write_json(layout.summary, summary)
