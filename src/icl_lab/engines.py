"""Run one function over many tasks on an existing engine: a local process pool
(`concurrent.futures`), SLURM job arrays through `submitit` (or its local backend), or Ray (a
private loopback-only instance or `--address`). Sweeps map `run_job` over trials with it and the
pipeline maps one checkpoint's measurement over (run, checkpoint) tasks, so both get the same three
engines and the same failure handling: a task that dies is yielded with its exception, never raised.

    >>> for i, result in map_tasks(square, [1, 2, 3], engine="local", n_jobs=2):
    ...     print(i, result)      # in completion order; `result` is the exception for a lost task
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from icl_lab.errors import ConfigError, IclLabError

ENGINES = ("local", "slurm", "ray")


def default_threads(engine: str, jobs: int) -> int:
    """Torch threads per task: the local pool shares this machine's cores among its workers; on a
    cluster each task asks for one core unless told otherwise."""
    return max(1, (os.cpu_count() or 1) // jobs) if engine == "local" else 1


def map_tasks(fn: Callable[..., Any], tasks: Sequence[Any], engine: str = "local", n_jobs: int = 1, threads: int = 1,
              address: str | None = None, slurm: dict[str, Any] | None = None, slurm_cluster: str = "slurm",
              folder: str | Path = ".submitit", name: str = "icl-lab", dashboard: bool = False) -> Iterator[tuple[int, Any]]:
    """Call `fn(task, threads)` for every task on `engine`; yield (task index, result) as each
    finishes, with the exception in place of the result for a task the engine lost or that raised.

    Args:
        fn: a module-level function (it is pickled to the workers).
        tasks: its first arguments.
        engine: "local", "slurm" or "ray".
        n_jobs: tasks at once (local workers, SLURM array parallelism, Ray CPUs of a local instance).
        threads: passed to `fn` as its second argument (and the CPUs each task asks for).
        address: Ray cluster address; None starts a private local Ray on 127.0.0.1.
        slurm: submitit parameters (`slurm_partition`, `timeout_min`, ...; `slurm_parameters`).
        slurm_cluster: submitit's cluster: "slurm", or "local" to run the same path on this machine.
        folder: where submitit keeps its job files.
        name: the SLURM job name (the `slurm:` block's `name` wins).
        dashboard: start the Ray dashboard (on 127.0.0.1) with a local Ray.

    Raises:
        ConfigError: an unknown engine, a bad `n_jobs`, an unknown `slurm:` key, or an engine that is
            missing or refuses to start.
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
        params = slurm_parameters(slurm or {}, n_jobs, threads, name)  # checked here, before the first task
        return _submitit(fn, tasks, n_jobs, threads, params, slurm_cluster, Path(folder))
    return _ray(fn, tasks, n_jobs, threads, address, dashboard)


def _local(fn: Callable, tasks: Sequence, n_jobs: int, threads: int) -> Iterator[tuple[int, Any]]:
    # spawn, not fork: a forked child of a process whose OpenMP pool already ran can deadlock
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(tasks)), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(fn, task, threads): i for i, task in enumerate(tasks)}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker (BrokenProcessPool) fails its task only
                yield futures[fut], e


def slurm_keys() -> list[str]:
    """The keys a sweep file's `slurm:` block may hold: submitit's shared parameters (`timeout_min`,
    `mem_gb`, `gpus_per_node`, ...) and every SLURM-specific one, prefixed `slurm_` (`slurm_partition`, ...)."""
    submitit = _require("submitit", "slurm")
    shared = sorted(set(submitit.AutoExecutor._valid_parameters()) - set(_SET_BY_OPTIONS))
    specific = sorted({f"slurm_{k}" for k in submitit.SlurmExecutor._valid_parameters()} - set(_SET_BY_OPTIONS))
    return shared + specific


_SET_BY_OPTIONS = {"cpus_per_task": "--threads", "slurm_cpus_per_task": "--threads",
                   "slurm_array_parallelism": "--jobs"}


def slurm_parameters(user: dict[str, Any], n_jobs: int, threads: int, name: str = "icl-lab") -> dict[str, Any]:
    """submitit parameters of one job array: icl-lab's defaults (`name`, `timeout_min` 60), then the
    sweep file's `slurm:` block, which wins; `--jobs` sets the array's parallelism and `--threads`
    each task's CPUs.

    Raises:
        ConfigError: a key submitit does not know (the valid ones named), or one an option sets.
    """
    for key in user:
        if key in _SET_BY_OPTIONS:
            raise ConfigError(f"slurm: {key} is set by {_SET_BY_OPTIONS[key]}; remove it from the sweep file")
    valid = slurm_keys()
    unknown = sorted(set(user) - set(valid))
    if unknown:
        raise ConfigError(f"slurm: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    return {"name": name, "timeout_min": 60, **user, "cpus_per_task": threads, "slurm_array_parallelism": n_jobs}


class LostTask(IclLabError):
    """A task the engine ended before it returned (killed, cancelled, timed out, out of memory)."""


def _submitit(fn: Callable, tasks: Sequence, n_jobs: int, threads: int, params: dict, cluster: str,
              folder: Path) -> Iterator[tuple[int, Any]]:
    submitit = _require("submitit", "slurm")
    try:
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
        ex.update_parameters(**params)
    except (ValueError, RuntimeError, AssertionError, NameError, TypeError) as e:
        raise ConfigError(f"submitit cannot start a {cluster} executor ({str(e).splitlines()[0]}); "
                          f"check the slurm: parameters, or use --executor local") from None
    if cluster == "local":  # the local backend starts a whole array at once: keep --jobs running, as SLURM's throttle does
        yield from _windowed(ex, fn, tasks, n_jobs, threads)
        return
    submitted = ex.map_array(fn, list(tasks), [threads] * len(tasks))  # one array, `%n_jobs` at once
    owner = {id(s): i for i, s in enumerate(submitted)}
    for sj in submitit.helpers.as_completed(submitted, poll_frequency=0.5):
        yield owner[id(sj)], _outcome(sj)


def _windowed(ex: Any, fn: Callable, tasks: Sequence, n_jobs: int, threads: int) -> Iterator[tuple[int, Any]]:
    waiting, running = list(range(len(tasks)))[::-1], {}
    while waiting or running:
        while waiting and len(running) < n_jobs:
            i = waiting.pop()
            running[i] = ex.submit(fn, tasks[i], threads)
        done = [i for i, job in running.items() if job.done()]
        if not done:
            time.sleep(0.3)
        for i in done:
            yield i, _outcome(running.pop(i))


def _outcome(job: Any) -> Any:
    """The job's result, or the exception that stands for it: a job that left no result names its
    state (SLURM's CANCELLED, TIMEOUT, OUT_OF_MEMORY; the local backend's INTERRUPTED) and its log."""
    from submitit.core.utils import UncompletedJobError

    try:
        return job.result()
    except UncompletedJobError:
        return LostTask(f"job {job.job_id} ended before it returned (state {job.state}; log {job.paths.stderr}); "
                        "rerun to resume it")
    except Exception as e:  # noqa: BLE001 - a failed array task fails its task only
        return e


def _ray(fn: Callable, tasks: Sequence, n_jobs: int, threads: int, address: str | None,
         dashboard: bool) -> Iterator[tuple[int, Any]]:
    ray = _require("ray", "ray")
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if address:
                with _single_node(ray, _is_loopback(address)):  # else Ray would dial 127.0.0.1 as the machine's address
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                with _single_node(ray):
                    ray.init(num_cpus=n_jobs * threads, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                             log_to_driver=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
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


@contextlib.contextmanager
def _single_node(ray: Any, on: bool = True) -> Iterator[None]:
    """Ray in single-node mode for the block: a private Ray whose servers (GCS, raylet, agents,
    workers, this driver) all listen on 127.0.0.1 (tests/sweep/test_sweep.py), or a driver that
    dials a loopback head at 127.0.0.1 itself.

    Ray replaces the address 127.0.0.1 by the machine's own address, unless it runs single-node
    (its default on macOS and Windows, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`): then it keeps
    127.0.0.1 and binds to loopback. The switch holds for this start only (the processes it spawns
    inherit it), so a later `--address` of a real cluster connects as usual."""
    if not on:
        yield
        return
    from ray._private import ray_constants

    env_before, flag_before = os.environ.get(_SINGLE_NODE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag_before
        if env_before is None:
            os.environ.pop(_SINGLE_NODE, None)
        else:
            os.environ[_SINGLE_NODE] = env_before


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "127.0.0.1", "::1")


_SINGLE_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _require(module: str, engine: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--executor {engine} needs {module}; install it with `pip install 'icl-lab[cluster]'`") from None
