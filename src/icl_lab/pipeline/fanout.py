"""Checkpoint fan-out: one measurement of one run spread as (run, checkpoint) tasks over the sweep
engines (`icl_lab.engines`: a local process pool, Ray, or SLURM through submitit).

Each task rebuilds the measurement from its registered name and options, loads the run and the
checkpoint itself, and returns the rows, so a task needs nothing from the parent but a path; the
parent merges the rows exactly as the serial `walk` would. With the same torch thread count a
fanned-out measurement gives the serial path's rows (tests/pipeline/test_fanout.py).

    >>> rows = fan_out(run, "llc", {"settings": {"draws": 100}}, engine="local", n_jobs=2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from icl_lab.engines import map_tasks
from icl_lab.errors import ConfigError, IclLabError
from icl_lab.measure.placement import place
from icl_lab.model.transformer import Transformer
from icl_lab.measure.memory import DEFAULT_MAX_BYTES
from icl_lab.pipeline.base import REGISTRY, Context, start_all
from icl_lab.pipeline.evalstore import load_eval_set
from icl_lab.run.rundir import Run, load_run
from icl_lab.train.checkpoint import load_weights_into

Progress = Callable[[str, int, int], None]  # (run name, checkpoints done, total)


def build(name: str, options: dict[str, Any] | None = None):
    """The registered measurement `name`, constructed with `options`.

    Raises:
        ConfigError: an unknown name, or a measurement that keeps state across checkpoints.
    """
    if name not in REGISTRY:
        raise ConfigError(f"unknown measurement {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    if not cls.fans_out:
        raise ConfigError(f"{name} keeps state across checkpoints and cannot fan out; run it without --executor")
    return cls(**(options or {}))


def checkpoint_task(task: tuple, threads: int = 1) -> list[dict]:
    """One (run, checkpoint) task: (run path, measurement name, options, step, all steps, device,
    dtype, working budget in bytes) -> rows."""
    path, name, options, step, steps, device, dtype, max_bytes = task
    torch.set_num_threads(max(1, threads))
    run = load_run(path)
    m = build(name, options)
    ev = load_eval_set(run) if m.needs_eval_set else None
    start_all([m], run, ev, device, dtype, max_bytes)
    model = place(Transformer(run.config.model), device, dtype).eval()
    load_weights_into(model, run.layout.checkpoint(step))
    per_step = run.config.train.batch_size * run.config.model.n_ctx
    with torch.inference_mode(not m.needs_grad):
        return m.measure(Context(run, step, step * per_step, list(steps), model, ev, max_bytes, frozenset(m.needs)))


def fan_out(run: Run, name: str, options: dict[str, Any] | None = None, steps: Sequence[int] | None = None,
            engine: str = "local", n_jobs: int = 1, threads: int = 1, address: str | None = None,
            slurm: dict[str, Any] | None = None, slurm_cluster: str = "slurm", device: str | None = None,
            dtype: str | None = None, progress: Progress | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """Measure `name` at every checkpoint of `run` (or `steps`) as tasks on `engine`, each task
    holding at most `max_bytes` of intermediates (the memory contract).

    Returns:
        The rows, sorted by step as `walk` returns them.

    Raises:
        ConfigError: as `build`; no checkpoints; a task that failed (its reason, after the others finish).
    """
    m = build(name, options)  # validates the options here, before any task starts
    all_steps = list(run.checkpoints if steps is None else steps)
    if not all_steps:
        raise ConfigError(f"{run.path} has no checkpoints yet; train it first")
    todo = [s for s in all_steps if m.wants(s, all_steps)]
    path = str(run.path.resolve())  # a task on another node or in another folder (Ray, SLURM) needs the absolute path
    tasks = [(path, name, options or {}, s, all_steps, device, dtype, max_bytes) for s in todo]
    by_step: dict[int, list[dict]] = {}
    failures: list[str] = []
    for i, result in map_tasks(checkpoint_task, tasks, engine, n_jobs, threads, address=address, slurm=slurm,
                               slurm_cluster=slurm_cluster, folder=run.layout.analysis_dir / ".submitit", name=f"icl-lab-{name}"):
        if isinstance(result, BaseException):
            text = str(result).splitlines()[0] if str(result) else type(result).__name__
            failures.append(f"step {todo[i]}: {text if isinstance(result, IclLabError) else type(result).__name__ + ': ' + text}")
        else:
            by_step[todo[i]] = result
        if progress is not None:
            progress(run.path.name, len(by_step) + len(failures), len(todo))
    if failures:
        raise ConfigError(f"{len(failures)} of {len(todo)} checkpoint tasks of {name} failed ({failures[0]}); "
                          "nothing was stored, rerun to retry")
    return pd.DataFrame([row for s in todo for row in by_step[s]])
