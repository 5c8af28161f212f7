"""Run a sweep's jobs on an existing engine: a local process pool (`concurrent.futures`), SLURM job
arrays through `submitit` (or its local backend), or Ray (a local instance or `--address`). Each
engine runs the same `run_job`, so a trial's result does not depend on which one ran it; this
module only submits, waits, and writes `SWEEP/sweep.json` after every finished trial."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from icl_lab.errors import ConfigError
from icl_lab.io import write_json
from icl_lab.sweep.job import run_job
from icl_lab.sweep.spec import Job

EXECUTORS = ("local", "slurm", "ray")
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


def default_threads(executor: str, jobs: int) -> int:
    """Torch threads per trial: the local pool shares this machine's cores among its workers; on a
    cluster each trial asks for one core unless told otherwise."""
    return max(1, (os.cpu_count() or 1) // jobs) if executor == "local" else 1


def run_sweep(jobs: list[Job], out: str | Path, executor: str = "local", n_jobs: int = 1, threads: int | None = None,
              address: str | None = None, slurm: dict[str, Any] | None = None, slurm_cluster: str = "slurm",
              progress: Progress | None = None, extra: dict | None = None) -> SweepResult:
    """Run every job on `executor` and write `out/sweep.json` (atomically, after each finished trial).

    Args:
        jobs: from `expand`.
        out: the sweep folder.
        executor: "local", "slurm" or "ray".
        n_jobs: trials at once (local workers, SLURM array parallelism, Ray CPUs of a local instance).
        threads: torch threads per trial (default `default_threads`).
        address: Ray cluster address (`ray.init(address=...)`); None starts a local Ray.
        slurm: extra submitit parameters (`slurm_partition`, `timeout_min`, ...).
        slurm_cluster: submitit's cluster: "slurm", or "local" to run the same path on this machine.
        progress: optional callback(result, done, total) after each trial.
        extra: more fields for sweep.json (the sweep file, the preset).

    Returns:
        The `SweepResult`; failed trials are in it with their reason, never raised.

    Raises:
        ConfigError: an unknown executor, a bad `n_jobs`, or an engine that is missing or refuses to start.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if n_jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"--jobs and --threads must be at least 1 (got {n_jobs}, {threads})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or default_threads(executor, n_jobs)
    start, done = time.perf_counter(), {}
    engines = {"local": _local, "slurm": _submitit, "ray": _ray}
    stream = engines[executor](jobs, n_jobs, threads, address=address, slurm=slurm or {}, cluster=slurm_cluster, out=out)

    def result() -> SweepResult:
        trials = [done.get(j.name) or _pending(j) for j in jobs]
        return SweepResult(out, trials, time.perf_counter() - start, executor, n_jobs, threads, dict(extra or {}))

    for job, res in stream:
        done[job.name] = res
        write_json(out / "sweep.json", result().to_json())  # a crashed sweep still records what finished
        if progress is not None:
            progress(res, len(done), len(jobs))
    final = result()
    write_json(out / "sweep.json", final.to_json())
    return final


def _pending(job: Job) -> dict:
    return {"name": job.name, "run": job.out, "status": "pending", "error": "not finished"}


def _failed(job: Job, e: BaseException) -> dict:
    """A trial the engine lost (a killed worker, a cancelled job): recorded, not raised."""
    text = (str(e).strip().splitlines() or [""])[-1][:300]
    return {**_pending(job), "status": "failed", "error": f"{type(e).__name__}: {text}"}


def _local(jobs: list[Job], n_jobs: int, threads: int, **_: Any) -> Iterator[tuple[Job, dict]]:
    # spawn, not fork: a forked child of a process whose OpenMP pool already ran can deadlock
    with ProcessPoolExecutor(max_workers=min(n_jobs, max(1, len(jobs))), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job, threads): job for job in jobs}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker (BrokenProcessPool) fails its trial only
                yield futures[fut], _failed(futures[fut], e)


def _submitit(jobs: list[Job], n_jobs: int, threads: int, slurm: dict, cluster: str, out: Path,
              **_: Any) -> Iterator[tuple[Job, dict]]:
    submitit = _require("submitit", "slurm")
    try:
        ex = submitit.AutoExecutor(folder=out / ".submitit" / "%j", cluster=cluster)
        ex.update_parameters(name="icl-lab-sweep", cpus_per_task=threads, slurm_array_parallelism=n_jobs,
                             timeout_min=60, **slurm)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"submitit cannot start a {cluster} executor ({str(e).splitlines()[0]}); "
                          f"check the sweep file's slurm: parameters, or use --executor local") from None
    submitted = ex.map_array(run_job, jobs, [threads] * len(jobs))
    owner = {id(s): j for s, j in zip(submitted, jobs)}
    for sj in submitit.helpers.as_completed(submitted, poll_frequency=0.5):
        try:
            yield owner[id(sj)], sj.result()
        except Exception as e:  # noqa: BLE001 - a failed or cancelled array task fails its trial only
            yield owner[id(sj)], _failed(owner[id(sj)], e)


def _ray(jobs: list[Job], n_jobs: int, threads: int, address: str | None, **_: Any) -> Iterator[tuple[Job, dict]]:
    ray = _require("ray", "ray")
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            else:  # a private instance with just the CPUs this sweep uses, registered at 127.0.0.1 (Ray 2.60
                # still binds some servers to all interfaces: docs/sweeps.md)
                ray.init(num_cpus=n_jobs * threads, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot start or reach Ray at {address or 'a local instance'} "
                              f"({str(e).splitlines()[0][:160]}); check --address or use --executor local") from None
    try:
        remote = ray.remote(num_cpus=threads, max_retries=0)(run_job)
        refs = {remote.remote(job, threads): job for job in jobs}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            job = refs[ready[0]]
            try:
                yield job, ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - a lost worker fails its trial only
                yield job, _failed(job, e)
    finally:
        if started:
            ray.shutdown()


def _require(module: str, executor: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--executor {executor} needs {module}; install it with `pip install 'icl-lab[cluster]'`") from None
