"""Atomic, pickle-free file writing shared by every stage that puts results on disk.

A write goes to a temporary file in the destination folder, is flushed to disk, then renamed over
the destination with `os.replace`, which is atomic on POSIX: a reader (or a crash) sees the old file
or the new one, never half of one. A write that fails raises `OSError` naming the destination (a
full disk is errno ENOSPC, also when safetensors' own writer hit it); a kill -9 can leave the
temporary file behind, which `clean_temp_files` removes."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

TEMP_FILE = re.compile(r"\..+\.tmp")  # what `atomic_write` names its temporary files


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and atomically move the result to `path`.

    Args:
        path: the final destination; its folder is created if missing.
        write: writes the complete file at the temporary path it is given.

    Returns:
        The destination path.

    Raises:
        OSError: the write failed (e.g. errno ENOSPC: disk full); `filename` is the destination,
            which still holds its old content, and the temporary file is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)  # frees the space a full disk needs for the error record
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e  # name the file meant, not the temporary one
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def json_text(obj: Any) -> str:
    """`obj` as indented, strict JSON for stdout: NaN and infinities (an undefined share, an interval
    over too few points) become null, since `json.dumps` writes the bare `NaN` that jq, JavaScript
    and every strict parser refuse."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Atomically write tensors (made contiguous) and string metadata to a safetensors file."""
    flat = {k: v.detach().contiguous() for k, v in tensors.items()}

    def save(tmp: Path) -> None:
        try:
            save_file(flat, str(tmp), metadata=metadata)
        except SafetensorError as e:  # its I/O errors arrive as text: "... (os error 28)"
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp)) from None

    return atomic_write(path, save)


class LineLog:
    """An append-only text file of lines (a training log). Each `append` writes and flushes its line
    at once, so a killed process loses no line and tears at most the last, and wakes a background
    thread that fdatasyncs the file while the caller never waits for the disk. An OS crash or power
    loss can lose the lines appended since the last sync that completed (a few ms of appends);
    `sync()` makes everything appended so far durable before it returns. An error of a background
    sync is raised by the next `append`, `sync` or `close`, which syncs once more. Use it as a
    context manager.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._file = open(path, "a", encoding="utf-8")
        self._wake, self._stop = threading.Event(), False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._sync_loop, name="icl-lab-log-sync", daemon=True)
        self._thread.start()

    def append(self, line: str) -> None:
        if self._error is not None:
            raise self._error
        self._file.write(line + "\n")
        self._file.flush()
        self._wake.set()

    def _sync(self) -> None:
        try:
            (getattr(os, "fdatasync", None) or os.fsync)(self._file.fileno())
        except OSError as e:
            self._error = self._error or e

    def _sync_loop(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            self._sync()

    def sync(self) -> None:
        """Flush and fdatasync now, in the caller's thread: every line appended so far is on disk
        when this returns (the trainer calls it before each checkpoint). Raises a sync's OSError."""
        self._file.flush()
        self._sync()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for the background sync, sync once more and close; raises a sync's OSError."""
        if self._file.closed:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        try:
            self._file.flush()
            self._sync()
        finally:
            self._file.close()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "LineLog":
        return self

    def __exit__(self, kind, value, tb) -> None:
        try:
            self.close()
        except OSError:
            if kind is None:  # with an exception already on its way, that one says more
                raise


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that a killed `atomic_write` left in `folder` (not its
    subfolders). Only call it while no other process writes there (a trainer holding the run's lock).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if TEMP_FILE.fullmatch(p.name) and p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
