"""The run directory's lock: a trainer holds `RUN/.train.lock` (an OS file lock, `filelock`) for as
long as it trains, so a second trainer, or a `--resume` of a run that is still training, stops
with a one-line error instead of interleaving its writes. The OS drops the lock when its process
dies, kill -9 included, so a killed run never stays locked; the file itself stays, harmless."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from icl_lab.errors import RunInUseError
from icl_lab.train.layout import RunLayout


def lock_holder(layout: RunLayout) -> str | None:
    """Who trains the run now: "process N" while a trainer holds its lock, else None."""
    if not layout.lock.is_file():
        return None
    probe = FileLock(str(layout.lock), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return _holder(layout)
    except OSError:  # a read-only run directory: nobody can be training into it
        return None
    probe.release()
    return None


def ensure_free(layout: RunLayout) -> None:
    """Fail early, before any work starts, if a trainer holds the run (`hold_run` still decides).

    Raises:
        RunInUseError: another process holds it.
    """
    holder = lock_holder(layout)
    if holder is not None:
        raise _in_use(layout, holder)


def _in_use(layout: RunLayout, holder: str) -> RunInUseError:
    return RunInUseError(f"{layout.root} is being trained by {holder}; wait for it to finish, or stop it and rerun with --resume")


@contextmanager
def hold_run(layout: RunLayout) -> Iterator[None]:
    """Hold the run's lock for the `with` block (the run directory is created if missing).

    Raises:
        RunInUseError: another process holds it; the message names that process.
    """
    layout.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.lock), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _in_use(layout, _holder(layout)) from None
    try:
        with open(layout.lock, "w") as f:  # for the message above; the OS lock is what excludes
            f.write(f"{os.getpid()}\n")
        yield
    finally:
        lock.release()


def _holder(layout: RunLayout) -> str:
    try:
        pid = layout.lock.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"
