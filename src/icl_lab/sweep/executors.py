"""Run a sweep's jobs on an existing engine (`icl_lab.engines`: a local process pool, SLURM job
arrays through `submitit`, or Ray). Each engine runs the same `run_job`, so a trial's result does
not depend on which one ran it; this module only submits, waits, and writes `SWEEP/sweep.json`
after every finished trial."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from icl_lab.engines import ENGINES, default_threads, map_tasks
from icl_lab.errors import ConfigError, IclLabError
from icl_lab.io import atomic_write, write_json
from icl_lab.run import load_run
from icl_lab.sweep.job import run_job
from icl_lab.sweep.spec import Job

EXECUTORS = ENGINES
Progress = Callable[[dict, int, int], None]  # (finished trial's result, trials done, total)


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: one result per job, in the jobs' order.

    Attributes:
        out: the sweep folder (holding the runs and sweep.json).
        trials: `run_job` results.
        seconds: wall time of the whole sweep.
        executor, jobs, threads: how it ran.
    """

    out: Path
    trials: list[dict]
    seconds: float
    executor: str
    jobs: int
    threads: int
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        """The trials that failed, each with its `error`."""
        return [t for t in self.trials if t["status"] != "ok"]

    def to_json(self) -> dict:
        """The content of sweep.json."""
        return {"out": str(self.out), "executor": self.executor, "jobs": self.jobs, "threads": self.threads,
                "seconds": round(self.seconds, 3), "failed": len(self.failed), **self.extra, "trials": self.trials}


def run_sweep(jobs: list[Job], out: str | Path, executor: str = "local", n_jobs: int = 1, threads: int | None = None,
              address: str | None = None, slurm: dict[str, Any] | None = None, slurm_cluster: str = "slurm",
              progress: Progress | None = None, extra: dict | None = None, dashboard: bool = False) -> SweepResult:
    """Run every job on `executor` and write `out/sweep.json` (atomically, after each finished trial).

    Args:
        jobs: from `expand`.
        out: the sweep folder.
        executor: "local", "slurm" or "ray".
        n_jobs: trials at once (local workers, SLURM array parallelism, Ray CPUs of a local instance).
        threads: torch threads per trial (default `default_threads`).
        address: Ray cluster address (`ray.init(address=...)`); None starts a local Ray.
        slurm: the sweep file's submitit parameters (`slurm_partition`, `timeout_min`, ...; they
            override icl-lab's defaults: `icl_lab.engines.slurm_parameters`).
        slurm_cluster: submitit's cluster: "slurm", or "local" to run the same path on this machine.
        progress: optional callback(result, done, total) after each trial.
        extra: more fields for sweep.json (the sweep file, the preset).
        dashboard: start the Ray dashboard (127.0.0.1) with a local Ray.

    Returns:
        The `SweepResult`; failed trials are in it with their reason, never raised.

    Raises:
        ConfigError: an unknown executor, a bad `n_jobs`, an unknown `slurm:` key, or an engine that
            is missing or refuses to start.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if n_jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"--jobs and --threads must be at least 1 (got {n_jobs}, {threads})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or default_threads(executor, n_jobs)
    start, done = time.perf_counter(), {}
    # workers elsewhere (a Ray node, a SLURM job) start in another folder: give them absolute run paths
    placed = [replace(j, out=str(Path(j.out).resolve())) for j in jobs]
    stream = map_tasks(run_job, placed, executor, n_jobs, threads, address=address, slurm=slurm, slurm_cluster=slurm_cluster,
                       folder=out.resolve() / ".submitit", name="icl-lab-sweep", dashboard=dashboard)

    def result() -> SweepResult:
        trials = [done.get(j.name) or _pending(j) for j in jobs]
        return SweepResult(out, trials, time.perf_counter() - start, executor, n_jobs, threads, dict(extra or {}))

    for i, res in stream:
        job = jobs[i]
        res = _failed(job, res) if isinstance(res, BaseException) else {**res, "run": job.out}  # as the caller named it
        done[job.name] = res
        write_json(out / "sweep.json", result().to_json())  # a crashed sweep still records what finished
        if progress is not None:
            progress(res, len(done), len(jobs))
    final = result()
    write_json(out / "sweep.json", final.to_json())
    write_family_metrics(out, jobs, final.trials)
    return final


def write_family_metrics(out: Path, jobs: list[Job], trials: list[dict]) -> Path | None:
    """`SWEEP/metrics.parquet`: the union of the finished runs' metrics tables, each row labelled with
    its trial, seed and grid values (one column per swept field), for the family report and queries.
    None when no run has a table yet (no analysis stage)."""
    frames = []
    for job, trial in zip(jobs, trials):
        run = Path(job.out)
        if trial["status"] != "ok" or not (run / "analysis" / "metrics.parquet").is_file():
            continue
        table = load_run(run).store.read()
        labels = {"trial": job.name, "seed": job.seed, **job.point}
        clash = sorted(set(labels) & set(table.columns))
        if clash:  # a swept field named like a table column: keep the table's, prefix the label
            labels = {(f"grid.{k}" if k in clash else k): v for k, v in labels.items()}
        frames.append(table.assign(**labels))
    family = out / "metrics.parquet"
    if not frames:
        family.unlink(missing_ok=True)  # no stale union of an earlier sweep
        return None
    union = pd.concat(frames, ignore_index=True)
    return atomic_write(family, lambda p: union.to_parquet(p, index=False))


def _pending(job: Job) -> dict:
    return {"name": job.name, "run": job.out, "point": job.point, "seed": job.seed, "status": "pending", "error": "not finished"}


def _failed(job: Job, e: BaseException) -> dict:
    """A trial the engine lost (a killed worker, a cancelled or timed-out job): recorded with the
    reason, not raised; the next run of the sweep resumes it from its last checkpoint."""
    if isinstance(e, IclLabError):  # the engine's own one-line reason (`engines.LostTask`)
        return {**_pending(job), "status": "failed", "error": str(e)}
    text = (str(e).strip().splitlines() or [""])[-1][:300]
    return {**_pending(job), "status": "failed", "error": f"{type(e).__name__}: {text}"}
