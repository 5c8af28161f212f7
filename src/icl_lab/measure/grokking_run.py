"""Grokking measured over a run: every checkpoint's progress measures (`icl_lab.measure.grokking`)
into the run's tidy metrics table as `grokking.{measure}` rows (and `grokking.embed_norm.{k}`, the
embedding's norm in frequency k), the three phases found from them
(`icl_lab.measure.grokking_phases`), and the final model's circuit
(`icl_lab.measure.grokking_circuit`), summarised in `analysis/grokking.json`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from icl_lab.data.modular import ModularTask, build_split
from icl_lab.errors import ConfigError
from icl_lab.io import atomic_write, write_json
from icl_lab.measure.grokking import embedding_frequency_norms, key_frequencies, progress_measures
from icl_lab.measure.grokking_circuit import analyze_circuit
from icl_lab.measure.grokking_phases import find_phases
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights

PREFIX = "grokking."
Progress = Callable[[str, int, int], None]  # (run name, checkpoints done, total)


def summary_path(run: Run) -> Path:
    return run.layout.analysis_dir / "grokking.json"


def task_of(run: Run) -> ModularTask:
    """The run's modular-addition split.

    Raises:
        ConfigError: the run trained on something else.
    """
    if run.config.data.kind != "modular":
        raise ConfigError(f"{run.path} is not a modular-addition run (data.kind={run.config.data.kind!r}); "
                          "train one with `icl-lab grok`")
    return build_split(run.config.data.modular)


def measure_table(run: Run) -> pd.DataFrame:
    """The run's progress measures, one row per checkpoint and one column per measure (`step` first),
    read back from its metrics table.

    Raises:
        ConfigError: the run has not been measured (`evaluate_run`).
    """
    if not run.layout.metrics.is_file():
        raise ConfigError(f"{run.path} has no metrics yet; run `icl-lab grok` (or evaluate_run) first")
    t = pd.read_parquet(run.layout.metrics)
    t = t[t.metric.str.startswith(PREFIX)]
    wide = t.pivot_table(index="step", columns="metric", values="value").reset_index()
    wide.columns = [str(c).removeprefix(PREFIX) for c in wide.columns]
    return wide.sort_values("step").reset_index(drop=True)


def frequency_table(wide: pd.DataFrame) -> pd.DataFrame:
    """The embedding's norm per frequency: [step x frequency k] from `measure_table`'s `embed_norm.{k}` columns."""
    cols = sorted((c for c in wide.columns if c.startswith("embed_norm.")), key=lambda c: int(c.split(".")[1]))
    out = wide[cols].copy()
    out.columns = [int(c.split(".")[1]) for c in cols]
    out.index = wide.step
    return out


@torch.inference_mode()
def evaluate_run(run: Run, progress: Progress | None = None, device: str = "cpu") -> dict:
    """Measure every checkpoint of a modular-addition run, find its phases, take its final model
    apart, replace the `grokking.` rows of its metrics table and write `analysis/grokking.json`.

    The key frequencies are the final model's (`key_frequencies` of its embedding), so the
    restricted and excluded losses of every checkpoint measure the circuit the run ends with.

    Returns:
        The summary: `{run, p, frac, split_seed, seed, weight_decay, step, key_freqs, final:
        {measure: value}, grokked, phases (see `find_phases`), circuit (see `analyze_circuit`)}`.

    Raises:
        ConfigError: not a modular-addition run, or it has no checkpoint.
    """
    task, cfg = task_of(run), run.config
    steps = run.checkpoints
    if not steps:
        raise ConfigError(f"{run.path} has no checkpoints; train it first")
    model = Transformer(cfg.model).to(device).eval()
    model.load_state_dict(load_weights(run.layout.checkpoint(steps[-1])))
    freqs = key_frequencies(embedding_frequency_norms(model, task.p))
    rows = []
    for i, step in enumerate(steps):
        model.load_state_dict(load_weights(run.layout.checkpoint(step)))
        base = {"run": run.path.name, "step": step, "tokens": step * cfg.train.batch_size * cfg.model.n_ctx}
        values = progress_measures(model, task, freqs)
        values |= {f"embed_norm.{k + 1}": float(v) for k, v in enumerate(embedding_frequency_norms(model, task.p))}
        rows += [{**base, "metric": PREFIX + name, "value": v} for name, v in values.items()]
        if progress is not None:
            progress(run.path.name, i + 1, len(steps))
    _write_rows(run, pd.DataFrame(rows))
    wide = measure_table(run)
    final = {k: float(v) for k, v in wide.iloc[-1].items() if k != "step" and not k.startswith("embed_norm.")}
    summary = {
        "run": str(run.path), "p": task.p, "frac": cfg.data.modular.frac, "split_seed": cfg.data.modular.split_seed,
        "seed": cfg.seed, "weight_decay": cfg.train.weight_decay, "step": steps[-1], "key_freqs": freqs,
        "final": final, "grokked": final["test_accuracy"] >= 0.99,
        "phases": find_phases(wide),
        "circuit": analyze_circuit(model, task.p, freqs),
    }
    write_json(summary_path(run), summary)
    return load_summary(run)  # as JSON holds it (frequency keys become strings), whether fresh or reused


def _write_rows(run: Run, table: pd.DataFrame) -> None:
    for col in ("layer", "head", "position"):
        table[col] = pd.array([pd.NA] * len(table), dtype="Int64")
    table["baseline"] = float("nan")
    table = table[["run", "step", "tokens", "metric", "layer", "head", "position", "value", "baseline"]]
    if run.layout.metrics.is_file():
        old = pd.read_parquet(run.layout.metrics)
        old = old[~old.metric.str.startswith(PREFIX)]
        table = pd.concat([old, table], ignore_index=True) if len(old) else table
    atomic_write(run.layout.metrics, lambda p: table.to_parquet(p, index=False))


def is_evaluated(run: Run) -> bool:
    """Whether `evaluate_run` has run since the run's last checkpoint."""
    path, steps = summary_path(run), run.checkpoints
    return bool(steps) and path.is_file() and path.stat().st_mtime >= run.layout.checkpoint(steps[-1]).stat().st_mtime


def load_summary(run: Run) -> dict:
    """The run's `analysis/grokking.json`.

    Raises:
        ConfigError: not evaluated yet.
    """
    if not summary_path(run).is_file():
        raise ConfigError(f"{run.path} has no grokking summary yet; run `icl-lab grok` (or evaluate_run) first")
    return json.loads(summary_path(run).read_text())
