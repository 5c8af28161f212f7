"""`icl-lab llc`: the local learning coefficient at the checkpoints of a run, serially or fanned out
over the sweep engines, stored as tidy rows, and summarised with its stages beside the paper's
measurements in `RUN/analysis/llc.json`.

Rows (metric, layer, head, value, lo, hi): `llc` (lo/hi: a 95% interval over chains), `llc.head`
per head with `--heads` (and `llc.head.healthy`), and the health of each estimate: `llc.drift`,
`llc.spread`, `llc.give_back`, `llc.healthy` (1 or 0; docs/llc.md). Their provenance holds the SGLD settings and
the fingerprint of the tokens the chains sampled on: 1,024 sequences of the run's own data (the
validation split for text) drawn with a seed of their own.

    >>> summary = llc_run(run, SGLDSettings(lr=1e-4, gamma=1000), heads=True, executor="local", jobs=2)
    >>> summary["stages"]["two_part_bump"]
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icl_lab.errors import ConfigError
from icl_lab.io import write_json
from icl_lab.measure.evalset import EvalSet, eval_tokens
from icl_lab.measure.llc import LLCEstimate, SGLDSettings, llc
from icl_lab.measure.llc_calibration import Calibration, calibrate, calibration_steps
from icl_lab.measure.llc_stages import compare_stages
from icl_lab.measure.placement import place
from icl_lab.pipeline.base import Context, Measurement, Progress, register, store_rows, walk
from icl_lab.run.results import is_fresh, llc_path, read_llc
from icl_lab.run.rundir import Run
from icl_lab.train.trainer import library_versions

LLC_SEED = 20240206  # the SGLD data: drawn apart from the evaluation set and from training batches
LLC_SEQUENCES = 1024
_TOKENS: dict[tuple, torch.Tensor] = {}


def llc_tokens(run: Run, n: int = LLC_SEQUENCES) -> torch.Tensor:
    """[n, pos] sequences of the run's own data for the SGLD chains (cached per run and n)."""
    key = (str(run.path), n)
    if key not in _TOKENS:
        _TOKENS[key] = eval_tokens(run, n, torch.Generator().manual_seed(LLC_SEED))[0]
    return _TOKENS[key]


def fingerprint(tokens: torch.Tensor) -> str:
    return "sha256:" + hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:32]


@register
class LLC(Measurement):
    """The LLC (and with `heads`, every head's refined LLC) at each checkpoint, with its health."""

    name, description = "llc", "local learning coefficient by SGLD (devinterp), with per-estimate health; `icl-lab llc`"
    needs_eval_set = False
    needs_grad = True

    def __init__(self, settings: dict | SGLDSettings | None = None, heads: bool = False, sequences: int = LLC_SEQUENCES) -> None:
        self.sgld = settings if isinstance(settings, SGLDSettings) else SGLDSettings.parse(settings or {}, "SGLD settings")
        self.heads, self.sequences = heads, sequences

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        self.tokens = llc_tokens(run, self.sequences)

    def measure(self, ctx: Context) -> list[dict]:
        est = llc(ctx.model, self.tokens, self.sgld, heads=self.heads)
        h = est.health()
        rows = [_estimate_row(ctx, "llc", est)]
        rows += [ctx.row(f"llc.{k}", float(h[k])) for k in ("drift", "spread")]
        rows += [ctx.row("llc.give_back", float(h["give_back"]))] if h["give_back"] is not None else []
        rows.append(ctx.row("llc.healthy", float(h["ok"])))
        for (layer, head), e in sorted(est.heads.items()):
            rows.append(_estimate_row(ctx, "llc.head", e, layer=layer, head=head))
            rows.append(ctx.row("llc.head.healthy", float(e.health()["ok"]), layer=layer, head=head))
        return rows

    def settings(self) -> dict:
        return {"sgld": self.sgld.model_dump(), "heads": self.heads, "sequences": self.sequences,
                "sgld_data": fingerprint(self.tokens) if hasattr(self, "tokens") else None}


def _estimate_row(ctx: Context, metric: str, est: LLCEstimate, **extra) -> dict:
    lo, hi = est.interval()  # 95% over independent chains (Student's t)
    return ctx.row(metric, est.value, lo=lo, hi=hi, **extra)


def llc_steps(steps: Sequence[int], n: int | None) -> list[int]:
    """`n` checkpoints spread over log-steps, always with the first and the last (all when n is None)."""
    steps = sorted(steps)
    if n is None or n >= len(steps):
        return steps
    if n < 2:
        raise ConfigError(f"--checkpoints must be at least 2 (got {n})")
    logs = np.log1p(steps)
    picks = {steps[int(np.abs(logs - t).argmin())] for t in np.linspace(logs[0], logs[-1], n)}
    rest = [s for s in steps if s not in picks]
    while len(picks) < n and rest:  # log-spacing collides among the dense early steps: fill from the widest gaps
        gaps = [min(abs(np.log1p(s) - np.log1p(p)) for p in picks) for s in rest]
        picks.add(rest.pop(int(np.argmax(gaps))))
    return sorted(picks)


def calibrate_run(run: Run, base: SGLDSettings | None = None, grid: dict | None = None,
                  progress: Progress | None = None, device: str | None = None, dtype: str | None = None) -> Calibration:
    """Calibrate the SGLD settings on `run` (`icl_lab.measure.llc_calibration`) and store the
    result in `RUN/analysis/llc_calibration.json`; the chains run on `device` in `dtype` (default
    cpu, fp32)."""
    steps = calibration_steps(run.checkpoints)
    if not steps:
        raise ConfigError(f"{run.path} has no checkpoints after step 0 to calibrate on; train it first")
    models = {s: place(run.model(s), device, dtype) for s in steps}
    cal = calibrate(models, llc_tokens(run), base, grid,
                    progress=None if progress is None else lambda d, t: progress(run.path.name, d, t))
    write_json(run.layout.analysis_dir / "llc_calibration.json", {"run": str(run.path), **cal.to_json(),
                                                                  "versions": library_versions()})
    return cal


def read_calibration(source: str | Path) -> dict:
    """A calibration `calibrate_run` stored, to measure other runs with its settings (`icl-lab llc --calibration`).

    Args:
        source: an llc_calibration.json, or a run directory holding one in its analysis/.

    Returns:
        The record: `Calibration.to_json()` plus the run it was made on; `record["chosen"]` holds lr,
        gamma and nbeta.

    Raises:
        ConfigError: no readable calibration there.

    Example:
        >>> read_calibration("runs/synthetic-2l")["chosen"]["lr"]
    """
    path = Path(source)
    if path.is_dir():
        path = path / "analysis" / "llc_calibration.json"
    try:
        record = json.loads(path.read_text())
        record["chosen"]["lr"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a readable llc_calibration.json; run `icl-lab llc RUN --calibrate` first") from None
    return record


def llc_settings(run: Run, base: SGLDSettings | None = None, calibration: dict | None = None,
                 overrides: dict | None = None) -> tuple[SGLDSettings, dict | None]:
    """The SGLD settings to measure `run` with: `base`, then lr, gamma, nbeta and the burn-in from
    `calibration` (default: the run's own stored calibration, if any), then `overrides`. The burn-in
    travels with the step size because the calibration judged its points' health after dropping it:
    the same chains without it start with their relaxation and can fail checks the point passed.

    Args:
        base: the chain settings (chains, draws, batch size, seed; default SGLDSettings()).
        calibration: a calibration record (`read_calibration`, or a fresh `calibrate_run`'s
            `to_json()` plus "run") to take the step size, localisation and temperature from.
        overrides: lr, gamma, nbeta or burnin given explicitly; they win over the calibration.

    Returns:
        (settings, the calibration record `llc_run` stores beside them: the calibration, with
        "overridden": overrides when there are any; None when uncalibrated).

    Raises:
        ConfigError: the run's stored calibration is unreadable.

    Example:
        >>> settings, cal = llc_settings(run, overrides={"lr": 3e-4})
        >>> llc_run(run, settings, calibration=cal)
    """
    stored = run.layout.analysis_dir / "llc_calibration.json"
    cal = calibration or (read_calibration(stored) if stored.is_file() else None)
    settings = base or SGLDSettings()
    if cal:  # calibrations written before the burn-in joined the grid have none: keep base's
        settings = settings.replace(**{k: cal["chosen"][k] for k in ("lr", "gamma", "nbeta", "burnin") if k in cal["chosen"]})
    overrides = overrides or {}
    settings = settings.replace(**overrides)
    return settings, cal if not overrides else {**cal, "overridden": overrides} if cal else None


def reusable_llc(run: Run, settings: SGLDSettings, heads: bool = False, checkpoints: int | None = None) -> dict | None:
    """The stored summary of `run` when `llc_run(run, settings, heads, checkpoints)` would only
    rewrite it, else None: `icl-lab llc --reuse`.

    Args:
        settings, heads, checkpoints: as `llc_run`'s; the stored llc.json must have been made with
            the same SGLD settings, heads and checkpoint steps, after the run's latest checkpoint.

    Returns:
        The stored llc.json summary, or None when the estimate must run.

    Raises:
        CheckpointError: the run's llc.json is damaged.

    Example:
        >>> reusable_llc(run, settings) or llc_run(run, settings)
    """
    old = read_llc(run)
    if old and is_fresh(run, llc_path(run)) and old["settings"]["sgld"] == settings.model_dump() \
            and old["settings"]["heads"] == heads and old["steps"] == llc_steps(run.checkpoints, checkpoints):
        return old
    return None


def llc_run(run: Run, settings: SGLDSettings | None = None, heads: bool = False, checkpoints: int | None = None,
            executor: str | None = None, jobs: int = 1, threads: int = 1, address: str | None = None,
            calibration: dict | None = None, progress: Progress | None = None, device: str | None = None,
            dtype: str | None = None) -> dict:
    """Estimate the LLC at the checkpoints of `run`, store the rows, write and return the summary.

    Args:
        settings: SGLD settings (default: SGLDSettings(); calibrate first: `calibrate_run`).
        heads: also every head's refined LLC (one more set of chains per head).
        checkpoints: measure this many checkpoints, spread over log-steps (default: all).
        executor: None serially; "local", "ray" or "slurm" fans checkpoints out (`jobs` at once).
        calibration: the calibration these settings came from (recorded in the summary).
        device, dtype: where the chains run ("cpu", "cuda", "auto"; "fp32", "bf16", ...; default cpu, fp32).
    """
    settings = settings or SGLDSettings()
    m = LLC(settings, heads)
    steps = llc_steps(run.checkpoints, checkpoints)
    start = time.perf_counter()
    if executor is None:
        table = walk(run, [m], steps=steps, progress=progress, device=device, dtype=dtype)
    else:
        from icl_lab.pipeline.fanout import fan_out

        table = fan_out(run, "llc", {"settings": settings.model_dump(), "heads": heads}, steps, executor, jobs, threads,
                        address=address, device=device, dtype=dtype, progress=progress)
    seconds = time.perf_counter() - start
    m.start(run, None, None, None)  # for the provenance's data fingerprint
    store_rows(run, [m], table)
    summary = summarize(run, table, m.settings(), calibration)
    summary["timing"] = {"seconds": round(seconds, 2), "checkpoints": len(steps), "executor": executor or "serial",
                         "jobs": jobs if executor else 1, "threads": threads if executor else torch.get_num_threads(),
                         "seconds_per_checkpoint": round(seconds / max(1, len(steps)), 2),
                         "device": device or "cpu", "dtype": dtype or "fp32"}
    write_json(llc_path(run), summary)
    return summary


def summarize(run: Run, table: pd.DataFrame, settings: dict, calibration: dict | None = None) -> dict:
    """llc.json: the settings, the curve's health, the stages beside the score rises and the phase window."""
    rows = table[table.metric.isin(("llc", "llc.healthy"))]
    # one index level: dropna=False over (step, tokens) would build their product
    wide = rows.pivot_table(index="step", columns="metric", values="value", dropna=False).reindex(columns=["llc", "llc.healthy"])
    wide["tokens"] = rows.groupby("step").tokens.first().reindex(wide.index)
    wide = wide.reset_index().sort_values("step")
    if wide.empty or not np.isfinite(wide["llc"]).any():
        raise ConfigError(f"no finite LLC estimate for {run.path}; every chain diverged: lower --lr or run --calibrate")
    bad = wide[wide["llc.healthy"] < 1].step.tolist()
    warnings = [] if not bad else [f"{len(bad)} of {len(wide)} estimates failed the health checks (steps {bad[:8]}"
                                   f"{'...' if len(bad) > 8 else ''}); see llc.drift, llc.give_back, llc.spread and docs/llc.md"]
    heads = table[table.metric == "llc.head.healthy"]
    if len(heads) and (heads.value < 1).any():
        worst = heads[heads.value < 1].groupby(["layer", "head"]).size().sort_values(ascending=False)
        named = ", ".join(f"L{int(l)}H{int(h)} ({n})" for (l, h), n in worst.items())
        warnings.append(f"{int((heads.value < 1).sum())} of {len(heads)} per-head estimates failed the health checks: {named}")
    if calibration is not None and not calibration.get("healthy", True):
        warnings.append("no calibration point was healthy at every calibration checkpoint; these settings are the least bad")
    if calibration is None:
        warnings.append("uncalibrated settings; run `icl-lab llc --calibrate` to choose them by the diagnostic")
    stages = _stages(run, wide)
    return {"run": str(run.path), "settings": settings, "calibration": calibration, "warnings": warnings,
            "steps": wide.step.tolist(), "tokens": wide.tokens.tolist(),
            "llc": [float(v) if np.isfinite(v) else None for v in wide["llc"]],  # None: a diverged estimate
            "healthy": [bool(v == 1) for v in wide["llc.healthy"]],
            "heads_healthy": None if heads.empty else {"healthy": int((heads.value == 1).sum()), "estimates": len(heads)},
            "stages": stages, "versions": library_versions()}


def _stages(run: Run, wide: pd.DataFrame) -> dict:
    tokens, values = wide.tokens.to_numpy(float), wide["llc"].to_numpy()
    phase = run.summary().get("phase_change") if run.layout.summary.is_file() else None
    scores = pd.DataFrame()
    if run.store.exists():
        stored = run.store.read(["tokens", "metric", "value"])
        stored = stored[stored.metric.isin(("previous_token", "prefix_matching"))]
        scores = stored.pivot_table(index="tokens", columns="metric", values="value", aggfunc="max")  # best head
    if not {"previous_token", "prefix_matching"} <= set(scores.columns):
        empty = np.array([])
        out = compare_stages(tokens, values, empty, empty, empty, phase)
        return {**out, "note": "the run is not analysed: run `icl-lab analyze` for the score rises"}
    return compare_stages(tokens, values, scores.index.to_numpy(float), scores["previous_token"].to_numpy(),
                          scores["prefix_matching"].to_numpy(), phase)
