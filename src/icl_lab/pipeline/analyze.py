"""`analyze`: the paper's measurements at every checkpoint of one or more runs, through the
pipeline (`icl_lab.pipeline.analysis` measurement objects, one walk per run), stored in each
run's `analysis/` folder: the tidy table (via the run's `MetricsStore`), `summary.json`, the
evaluation set, the viewer's patterns and the composition graph, so the report only reads.

After the walk: a per-token-loss PCA fitted jointly over the runs that share an evaluation set,
phase-change detection per run (`icl_lab.measure.phase`), the induction heads by the one rule
(`icl_lab.measure.induction`) and the share of the ICL score that ablating them together removes
(the report's verdict reads it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from icl_lab.errors import ConfigError
from icl_lab.intervene.ablate import ablate_head_group
from icl_lab.intervene.attribution import removed_fraction
from icl_lab.io import write_json
from icl_lab.kinds import organism
from icl_lab.measure.evalset import EVAL_SEED, EvalSet, eval_context, make_eval_set
from icl_lab.measure.induction import INDUCTION_THRESHOLDS, induction_heads, induction_rule
from icl_lab.measure.intervals import removed_fraction_interval, resample_weights
from icl_lab.measure.losses import icl_positions
from icl_lab.measure.memory import DEFAULT_MAX_BYTES, forward_row_bytes
from icl_lab.measure.pca import before_after_vector, joint_pca
from icl_lab.measure.phase import detect_phase_change, search_start
from icl_lab.measure.placement import place
from icl_lab.pipeline.analysis import ANALYSIS, HEAD_METRICS, HeadScore, ICLScore, PerTokenLoss
from icl_lab.pipeline.base import Measurement, Progress, measurements, store_rows, walk
from icl_lab.pipeline.evalstore import save_eval_set
from icl_lab.pipeline.memory import MemoryPlan, check_memory, plan_memory
from icl_lab.pipeline.views import AttentionViewer, Composition
from icl_lab.run.results import attention_paths
from icl_lab.run.rundir import Run, check_eval_data
from icl_lab.train.trainer import library_versions

# bump when a definition changes: `--reuse` then redoes older analyses (3: stored views, group ablation; 4: repeated passage)
ANALYSIS_VERSION = 4
MIN_PHASE_CHECKPOINTS = 4
GROUP_ABLATION_MACS = 5e12  # the group ablation's multiply-adds before it uses fewer windows (decision 24): ~1 min on 2 cores
GROUP_ABLATION_MIN_EXAMPLES = 64
SUMMARY_METRICS = ("loss", "icl_score", *HEAD_METRICS)  # what summary.json is built from
# in a head's record when measured
BESIDE = ("copying.null", "copying.margin", "copying_total", "copying_total.null", "copying_total.margin")


def _phase(run: Run, table: pd.DataFrame, ms: Sequence[Measurement] = ()) -> dict:
    """The phase-change record (`icl_lab.measure.phase`), searched after the warm-up; with the
    walk's per-example ICL and prefix-matching scores at hand, its edges get bootstrap intervals."""
    series = table[table.metric.isin(("loss", "icl_score", "prefix_matching"))]
    series = series.pivot_table(index="tokens", columns="metric", values="value", aggfunc="max")
    series = series[series.index > 0]
    tc = run.config.train
    start = search_start(tc.batch_size * run.config.model.n_ctx, tc.warmup_steps, tc.steps)
    if (series.index > start).sum() >= MIN_PHASE_CHECKPOINTS:
        return detect_phase_change(series.index.to_numpy(float), series["icl_score"].to_numpy(), series["prefix_matching"].to_numpy(),
                                   series["loss"].to_numpy(), search_from=start, resamples=_resampled_series(run, series.index, ms))
    # e.g. one imported pretrained checkpoint: the scores stand, a transition cannot be seen
    return {"detected": False, "start_tokens": None, "end_tokens": None, "loss_bump": None, "overlap": None,
            "window_overlap": None, "coincide": False, "icl_window": None, "prefix_matching_window": None,
            "search_from_tokens": start, "reason": f"{(series.index > start).sum()} checkpoints after the warm-up "
            f"({start:.0f} tokens); detecting a phase change needs {MIN_PHASE_CHECKPOINTS}"}


def _resampled_series(run: Run, tokens: pd.Index, ms: Sequence[Measurement]) -> tuple[np.ndarray, np.ndarray] | None:
    """[resample, checkpoint] ICL scores and best prefix-matching scores, each checkpoint's mean over
    the same resampled evaluation examples (`icl_lab.measure.intervals`), or None when this walk
    did not keep the per-example scores of every checkpoint in `tokens`."""
    per_step = run.config.train.batch_size * run.config.model.n_ctx
    icl = next((m for m in ms if isinstance(m, ICLScore)), None)
    pm = next((m for m in ms if isinstance(m, HeadScore) and m.name == "prefix_matching"), None)
    steps = [int(t // per_step) for t in tokens]
    if icl is None or pm is None or not all(s in icl.samples and s in pm.samples for s in steps):
        return None
    icl_x = torch.stack([icl.samples[s] for s in steps], dim=1).double()  # [example, checkpoint]
    pm_x = torch.stack([pm.samples[s].flatten(1) for s in steps], dim=1).double()  # [example, checkpoint, layer*head]
    icl_r = resample_weights(len(icl_x)) @ icl_x  # [resample, checkpoint]
    pm_r = torch.einsum("rn,nch->rch", resample_weights(len(pm_x)), pm_x).amax(-1)  # best head per resample
    return icl_r.numpy(), pm_r.numpy()


def group_ablation(run: Run, ev: EvalSet, heads: list[tuple[int, int]], device: str | None, dtype: str | None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> dict | None:
    """Share of the ICL score that pattern-preserving zero-ablation of all `heads` together
    removes at the final checkpoint, with its 95% bootstrap interval over examples (None when
    there are no heads; `removed` None when the clean model shows no in-context learning). Only
    the two losses the ICL score reads are computed, streamed within `max_bytes`."""
    if not heads:
        return None
    early, late = icl_positions(ev.tokens.shape[1])
    n = group_ablation_examples(run.config.model, ev.tokens.shape, min(l for l, _ in heads))
    model = place(run.model(), device, dtype)
    losses = ablate_head_group(model, ev.tokens[:n], heads, kind="zero", pattern_preserving=True,
                               positions=[early - 1, late - 1], max_bytes=max_bytes).double().cpu()
    icl = losses[:, :, 1] - losses[:, :, 0]  # [clean | ablated, example]
    clean, ablated = float(icl[0].mean()), float(icl[1].mean())
    removed = removed_fraction(clean, ablated)
    lo, hi = removed_fraction_interval(icl[0], icl[1]) if not np.isnan(removed) else (np.nan, np.nan)
    return {"step": run.checkpoints[-1], "heads": [list(h) for h in heads], "kind": "zero", "pattern_preserving": True,
            "clean_icl_score": clean, "ablated_icl_score": ablated, "removed": None if np.isnan(removed) else removed,
            "removed_ci": None if np.isnan(removed) else [float(lo), float(hi)], "n_examples": n}


def group_ablation_examples(cfg, shape: tuple[int, int], first_layer: int) -> int:
    """How many evaluation windows the group ablation runs on: all of them when its multiply-adds
    (a clean pass, and a second copy from the group's first layer on) stay under
    GROUP_ABLATION_MACS, else as many as do, at least GROUP_ABLATION_MIN_EXAMPLES (decision 24)."""
    n, n_pos = shape
    per_layer = n_pos * (4 * cfg.n_heads * cfg.d_model * cfg.d_head + (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_mlp)
    per_layer += n_pos * n_pos * cfg.n_heads * cfg.d_head  # the causal scores and the mixing
    per_example = per_layer * (cfg.n_layers + (cfg.n_layers - first_layer))
    return int(min(n, max(GROUP_ABLATION_MIN_EXAMPLES, GROUP_ABLATION_MACS // per_example)))


def _summary(run: Run, table: pd.DataFrame, ev: EvalSet, ms: Sequence[Measurement] = ()) -> dict:
    icl = table[table.metric == "icl_score"].sort_values("step")
    last = table.step.max()
    final = table[(table.step == last) & table.metric.isin(HEAD_METRICS + BESIDE)]
    head_records = []
    for (layer, head), g in final.groupby(["layer", "head"]):
        g = g.set_index("metric")
        # every head has HEAD_METRICS; a companion (copying_total: candidates only) is in the record only
        # where it was measured, so the summary holds no NaN placeholder (NaN != NaN after a round trip)
        measured = [m for m in HEAD_METRICS + BESIDE if m in g.index]
        head_records.append({"layer": int(layer), "head": int(head), **{m: float(g.value[m]) for m in measured},
                             "ci": {m: [float(g.lo[m]), float(g.hi[m])] for m in HEAD_METRICS + BESIDE
                                    if m in g.index and not np.isnan(g.lo[m])}})
    early, late = icl_positions(eval_context(run))
    last = icl.iloc[-1]
    return {
        "run": str(run.path),
        "phase_change": _phase(run, table, ms),
        "icl_score": {"initial": float(icl.value.iloc[0]), "final": float(last.value), "final_ci": [float(last.lo), float(last.hi)],
                      "early_token": early, "late_token": late},
        "repeated_passage": _passage(table),
        "heads": head_records,
        "induction_heads": [{"layer": l, "head": h} for l, h in induction_heads(head_records)],
        "induction_rule": {"rule": induction_rule(), "thresholds": INDUCTION_THRESHOLDS},
        "provenance": {"versions": library_versions(), "analysis_version": ANALYSIS_VERSION,
                       **({"branch": run.meta["parent"]} if run.meta.get("parent") else {}),  # its intervention is held where it was
                       "eval_set": ev.fingerprint, "eval_seed": EVAL_SEED, "bos": ev.bos,
                       "tokenizer": run.meta.get("tokenizer_fingerprint"),
                       **({"model": run.meta["model_description"]} if run.meta.get("model_description") else {})},
    }


def _passage(table: pd.DataFrame) -> dict | None:
    """The repeated-passage losses at the last checkpoint (None when not measured)."""
    rows = table[table.metric.str.startswith("repeated_passage.") & (table.step == table.step.max())].set_index("metric")
    if rows.empty:
        return None
    gain = rows.loc["repeated_passage.gain"]
    return {"first": float(rows.value["repeated_passage.first"]), "second": float(rows.value["repeated_passage.second"]),
            "gain": float(gain.value), "gain_ci": [float(gain.lo), float(gain.hi)]}


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
        if not all(p.is_file() for p in attention_paths(run)):
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


def reusable_analysis(runs: Sequence[Run], n_examples: int = 256, only: Sequence[str] | None = None) -> dict[str, dict] | None:
    """The stored summaries of `runs` when `analyze(runs, n_examples, only=only)` would only rewrite
    them (`is_analysed`), else None: `icl-lab analyze --reuse`. A partial analysis (`only`) is never reused.

    Args:
        runs: the runs `analyze` would measure together.
        n_examples: evaluation sequences, as `analyze`'s.
        only: measurement names, as `analyze`'s; anything but None returns None.

    Returns:
        Run path -> its stored summary dict, in the order of `runs`; None when the analysis must run.

    Example:
        >>> reusable_analysis(runs) or analyze(runs)
    """
    if only is not None or not is_analysed(runs, n_examples=n_examples):
        return None
    return {str(r.path): r.summary() for r in runs}


def _check(runs: Sequence[Run]) -> None:
    if not runs:
        raise ConfigError("analyze needs at least one run directory")
    for r in runs:
        org = organism(r.config.data.kind)
        if org is not None:
            raise ConfigError(f"{r.path} is a {org.kind} run, which has no in-context-learning analysis; {org.hint(r.path)}")
        if not r.checkpoints:
            raise ConfigError(f"{r.path} has no checkpoints yet; train it first")
        check_eval_data(r)


def _measurements(only: Sequence[str] | None) -> list[Measurement]:
    if only is None:
        return [*measurements(ANALYSIS), AttentionViewer(), Composition()]
    return measurements(only)


def analyze(runs: Sequence[Run], n_examples: int = 256, progress: Progress | None = None, write: bool = True,
            device: str | None = None, dtype: str | None = None, only: Sequence[str] | None = None,
            max_memory: int | str | None = None) -> dict[str, dict]:
    """Measure every checkpoint of `runs` and (by default) store the results in each run's `analysis/`.

    Args:
        runs: runs to measure. Each is evaluated on its own evaluation set (its data and a fixed
            seed); runs whose sets are equal share one per-token-loss PCA space.
        n_examples: evaluation sequences.
        progress: optional callback(run name, checkpoints done, total).
        write: store the table, summary.json, the evaluation set, the viewer and the composition graph.
        device, dtype: where to measure ("cpu", "cuda", "auto"; "fp32", "bf16", ...).
        only: registered measurement names (`icl_lab.pipeline.REGISTRY`) to run instead of all;
            their rows replace the stored ones, and summary.json is rebuilt when the table then
            holds everything it needs.
        max_memory: the most the analysis may hold (bytes, or "4GB"; default 8 GB, and never more
            than the machine has free): each measurement's chunks are sized from it, and a run
            that cannot fit is refused before any work (docs/pipeline.md, "Memory contract").

    Returns:
        Run path -> summary dict (keys documented in docs/analysis.md); empty for a run whose
        summary could not be built (an `only` run on a run never fully analysed).

    Raises:
        ConfigError: a run without checkpoints, an organism's run (`icl_lab.kinds`), an unknown measurement.
        DataError: a text run whose tokenizer or data no longer match what it was trained on.
        ResourceError: a run whose analysis would not fit in `max_memory` (checked before any work).
    """
    _check(runs)
    _measurements(only)  # an unknown name fails before any work
    sets = {str(r.path): make_eval_set(r, n_examples) for r in runs}
    plans = {str(r.path): analysis_plan(r, sets[str(r.path)], only, max_memory, dtype) for r in runs}
    for r in runs:
        check_memory(plans[str(r.path)], f"analyzing {r.path.name}")
    summaries = {}
    for group in _groups(runs, sets).values():
        walked = []
        for run in group:
            ms, budget = _measurements(only), plans[str(run.path)].working
            walked.append((run, ms, walk(run, ms, sets[str(run.path)], progress=progress, device=device, dtype=dtype,
                                         max_bytes=budget)))
        pca = _joint_pca(walked)
        for run, ms, table in walked:
            ev = sets[str(run.path)]
            table = pd.concat([table, pca.get(str(run.path), pd.DataFrame())], ignore_index=True)
            summaries[str(run.path)] = _finish(run, ms, table, ev, group, pca, n_examples, write, device, dtype,
                                               plans[str(run.path)].working)
    return {str(r.path): summaries[str(r.path)] for r in runs}


def _joint_pca(walked: list[tuple[Run, list[Measurement], pd.DataFrame]]) -> dict:
    """Rows `pca_1..k` per run and the explained variance, from the runs' per-token-loss vectors."""
    found = [(run, next((m for m in ms if isinstance(m, PerTokenLoss)), None)) for run, ms, _ in walked]
    found = [(run, m) for run, m in found if m is not None and m.vectors]
    if not found:
        return {}
    proj, explained = joint_pca(np.concatenate([np.stack(m.vectors) for _, m in found]))
    out, offset = {"explained": explained.tolist(), "vectors": {}}, 0
    for run, m in found:
        coords, offset = proj[offset : offset + len(m.steps)], offset + len(m.steps)
        per_step = run.config.train.batch_size * run.config.model.n_ctx
        out[str(run.path)] = pd.DataFrame([{"run": run.path.name, "step": s, "tokens": s * per_step, "metric": f"pca_{k + 1}",
                                            "value": float(c[k])} for s, c in zip(m.steps, coords) for k in range(coords.shape[1])])
        out["vectors"][str(run.path)] = (m.steps, np.stack(m.vectors))
    return out


def analysis_plan(run: Run, ev: EvalSet, only: Sequence[str] | None = None, max_memory: int | str | None = None,
                  dtype: str | None = None) -> MemoryPlan:
    """The memory plan (`icl_lab.pipeline.memory`) of `analyze` on `run`: its measurements, and
    the group ablation of the induction heads, which runs a clean and an ablated copy of each
    sequence side by side."""
    cfg = run.config.model
    group = GroupAblationFloor() if only is None else None
    return plan_memory(cfg, [*_measurements(only), *([group] if group else [])], ev, max_memory, dtype)


class GroupAblationFloor(Measurement):
    """Stands for the induction heads' group ablation in the memory plan (it is not walked)."""

    name = "induction_ablation"

    def floor_bytes(self, cfg, ev: EvalSet | None, itemsize: int) -> int:
        return 0 if ev is None else 2 * forward_row_bytes(cfg, ev.tokens.shape[1], itemsize, logits=False)


def _finish(run: Run, ms: list[Measurement], table: pd.DataFrame, ev: EvalSet, group: list[Run], pca: dict,
            n_examples: int, write: bool, device: str | None, dtype: str | None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Store one run's rows and views, then build its summary from the stored table."""
    settings = {"eval_set": ev.fingerprint, "eval_seed": EVAL_SEED, "bos": ev.bos, "n_examples": len(ev.tokens),
                "tokenizer": run.meta.get("tokenizer_fingerprint"), "analysis_version": ANALYSIS_VERSION,
                "induction_rule": {"rule": induction_rule(), "thresholds": INDUCTION_THRESHOLDS}}
    stored = store_rows(run, ms, table, settings) if write else table
    if write:
        save_eval_set(run, ev)
    if not set(SUMMARY_METRICS) <= set(stored.metric.unique()):
        if write:
            _save_views(run, ms, None, device, dtype, max_bytes)
        return {}
    stored = stored[stored.step.isin(run.checkpoints)]
    summary = _summary(run, stored, ev, ms)
    previous = run.summary() if run.layout.summary.is_file() else {}
    summary["pca"] = ({"explained_variance": pca["explained"], "runs": [str(r.path) for r in group]}
                      if str(run.path) in pca.get("vectors", {}) else previous.get("pca", {}))
    summary["n_examples"] = n_examples
    heads = [(h["layer"], h["head"]) for h in summary["induction_heads"]]
    summary["induction_ablation"] = group_ablation(run, ev, heads, device, dtype, max_bytes)
    if write:
        _save_views(run, ms, summary, device, dtype, max_bytes)
        _write_before_after(run, summary, pca.get("vectors", {}).get(str(run.path)))
        write_json(run.layout.summary, summary)
    return summary


def _save_views(run: Run, ms: list[Measurement], summary: dict | None, device: str | None, dtype: str | None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Store the viewer (adding the phase window's edges to it) and anything else the measurements keep."""
    for m in ms:
        if isinstance(m, AttentionViewer) and summary and summary["phase_change"]["detected"]:
            per_step = run.config.train.batch_size * run.config.model.n_ctx
            edges = [int(summary["phase_change"][k] // per_step) for k in ("start_tokens", "end_tokens")]
            missing = [s for s in edges if s in run.checkpoints and s not in m.patterns]
            if missing:
                walk(run, [m], steps=missing, device=device, dtype=dtype, max_bytes=max_bytes)
        m.save(run)


def _write_before_after(run: Run, summary: dict, vectors: tuple[list[int], np.ndarray] | None) -> None:
    if vectors is None:
        return
    steps, vecs = vectors
    phase = summary["phase_change"]
    if not phase["detected"]:
        run.layout.before_after.unlink(missing_ok=True)
        return
    per_step = run.config.train.batch_size * run.config.model.n_ctx
    by_tokens = {s * per_step: i for i, s in enumerate(steps)}
    start, end = by_tokens[int(phase["start_tokens"])], by_tokens[int(phase["end_tokens"])]
    write_json(run.layout.before_after, {"start_step": steps[start], "end_step": steps[end],
                                         "vector": before_after_vector(vecs[start], vecs[end]).tolist()})
