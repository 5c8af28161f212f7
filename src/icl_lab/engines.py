"""Run one function over many tasks on an existing engine: a local process pool
(`concurrent.futures`), SLURM job arrays through `submitit` (or its local backend), or Ray (a local
instance or `--address`). Sweeps map `run_job` over trials with it and the pipeline maps one
checkpoint's measurement over (run, checkpoint) tasks, so both get the same three engines and the
same failure handling: a task that dies is yielded with its exception, never raised.

    >>> for i, result in map_tasks(square, [1, 2, 3], engine="local", n_jobs=2):
    ...     print(i, result)      # in completion order; `result` is the exception for a lost task
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from icl_lab.errors import ConfigError

ENGINES = ("local", "slurm", "ray")


def default_threads(engine: str, jobs: int) -> int:
    """Torch threads per task: the local pool shares this machine's cores among its workers; on a
    cluster each task asks for one core unless told otherwise."""
    return max(1, (os.cpu_count() or 1) // jobs) if engine == "local" else 1


def map_tasks(fn: Callable[..., Any], tasks: Sequence[Any], engine: str = "local", n_jobs: int = 1, threads: int = 1,
              address: str | None = None, slurm: dict[str, Any] | None = None, slurm_cluster: str = "slurm",
              folder: str | Path = ".submitit", name: str = "icl-lab") -> Iterator[tuple[int, Any]]:
    """Call `fn(task, threads)` for every task on `engine`; yield (task index, result) as each
    finishes, with the exception in place of the result for a task the engine lost or that raised.

    Args:
        fn: a module-level function (it is pickled to the workers).
        tasks: its first arguments.
        engine: "local", "slurm" or "ray".
        n_jobs: tasks at once (local workers, SLURM array parallelism, Ray CPUs of a local instance).
        threads: passed to `fn` as its second argument (and the CPUs each task asks for).
        address: Ray cluster address; None starts a private local Ray.
        slurm: extra submitit parameters (`slurm_partition`, `timeout_min`, ...).
        slurm_cluster: submitit's cluster: "slurm", or "local" to run the same path on this machine.
        folder: where submitit keeps its job files.
        name: the SLURM job name.

    Raises:
        ConfigError: an unknown engine, a bad `n_jobs`, or an engine that is missing or refuses to start.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown executor {engine!r}; choose one of {', '.join(ENGINES)}")
    if n_jobs < 1 or threads < 1:
        raise ConfigError(f"--jobs and --threads must be at least 1 (got {n_jobs}, {threads})")
    if not tasks:
        return iter(())
    if engine == "local":
        return _local(fn, tasks, n_jobs, threads)
    if engine == "slurm":
        return _submitit(fn, tasks, n_jobs, threads, slurm or {}, slurm_cluster, Path(folder), name)
    return _ray(fn, tasks, n_jobs, threads, address)


def _local(fn: Callable, tasks: Sequence, n_jobs: int, threads: int) -> Iterator[tuple[int, Any]]:
    # spawn, not fork: a forked child of a process whose OpenMP pool already ran can deadlock
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(tasks)), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(fn, task, threads): i for i, task in enumerate(tasks)}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker (BrokenProcessPool) fails its task only
                yield futures[fut], e


def _submitit(fn: Callable, tasks: Sequence, n_jobs: int, threads: int, slurm: dict, cluster: str, folder: Path,
              name: str) -> Iterator[tuple[int, Any]]:
    submitit = _require("submitit", "slurm")
    try:
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
        ex.update_parameters(name=name, cpus_per_task=threads, slurm_array_parallelism=n_jobs, timeout_min=60, **slurm)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"submitit cannot start a {cluster} executor ({str(e).splitlines()[0]}); "
                          f"check the slurm: parameters, or use --executor local") from None
    submitted = ex.map_array(fn, list(tasks), [threads] * len(tasks))
    owner = {id(s): i for i, s in enumerate(submitted)}
    for sj in submitit.helpers.as_completed(submitted, poll_frequency=0.5):
        try:
            yield owner[id(sj)], sj.result()
        except Exception as e:  # noqa: BLE001 - a failed or cancelled array task fails its task only
            yield owner[id(sj)], e


def _ray(fn: Callable, tasks: Sequence, n_jobs: int, threads: int, address: str | None) -> Iterator[tuple[int, Any]]:
    ray = _require("ray", "ray")
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            else:  # a private instance with just the CPUs this map uses, registered at 127.0.0.1 (Ray 2.60
                # still binds some servers to all interfaces: docs/sweeps.md)
                ray.init(num_cpus=n_jobs * threads, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot start or reach Ray at {address or 'a local instance'} "
                              f"({str(e).splitlines()[0][:160]}); check --address or use --executor local") from None
    try:
        remote = ray.remote(num_cpus=threads, max_retries=0)(fn)
        refs = {remote.remote(task, threads): i for i, task in enumerate(tasks)}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            try:
                yield refs[ready[0]], ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - a lost worker fails its task only
                yield refs[ready[0]], e
    finally:
        if started:
            ray.shutdown()


def _require(module: str, engine: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--executor {engine} needs {module}; install it with `pip install 'icl-lab[cluster]'`") from None
