"""What the trainer does to survive a crash: choose the checkpoint a `--resume` starts from (the
newest one that reads back whole, with every checkpoint before it whole too, so a damaged one is
rewritten), cut the training log back to it, and record why a run stopped even when the disk is
full. Used by `icl_lab.train.trainer.fit`."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

from icl_lab.errors import IclLabWarning, StorageError
from icl_lab.io import write_json, write_text
from icl_lab.train.checkpoint import checkpoint_problem
from icl_lab.train.layout import RunLayout
from icl_lab.train.records import read_log


def resume_point(layout: RunLayout) -> int | None:
    """The step a resume starts from: the newest checkpoint such that it and every checkpoint
    before it read back whole (content hashes included); None when even step 0's is damaged (or
    there is none). Warns with `IclLabWarning` when it passes over damaged checkpoints; training
    from there rewrites them, bit for bit."""
    steps = layout.checkpoint_steps()
    good = None
    for step in steps:
        problem = checkpoint_problem(layout.checkpoint(step))
        if problem is not None:
            later = [s for s in steps if s > step]
            start = f"step {good}" if good is not None else "scratch"
            warnings.warn(f"{problem.split(';')[0]}; resuming from {start}, which rewrites it"
                          + (f" and the {len(later)} checkpoint{'s' * (len(later) > 1)} after it" if later else ""),
                          IclLabWarning, stacklevel=3)
            return good
        good = step
    return good


def truncate_log(layout: RunLayout, step: int) -> None:
    """Keep the log rows up to `step` (the resume point); a torn last line is dropped with a warning."""
    log = read_log(layout.log)
    if log.torn:
        warnings.warn(f"{layout.root.name}/train_log.jsonl ended in a line cut off mid-write ({log.torn[:40]!r}); dropped it",
                      IclLabWarning, stacklevel=3)
    if log.torn or any(r["step"] > step for r in log.rows):
        write_text(layout.log, "".join(json.dumps(r) + "\n" for r in log.rows if r["step"] <= step))


def storage_error(e: OSError, layout: RunLayout) -> StorageError:
    """The one-line error for an OSError met while training (most often a full disk)."""
    where = str(e.filename or layout.root)
    try:
        where = str(Path(where).relative_to(layout.root))
    except ValueError:
        pass
    where = str(layout.root) if where == "." else where
    resume = f"continue with `icl-lab train --resume --out {layout.root}`"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full writing {where} (no space left on device); free some space, then {resume}")
    return StorageError(f"cannot write {where} ({e.strerror or type(e).__name__}); fix that, then {resume}")


def record_stop(layout: RunLayout, meta: dict, reason: str) -> None:
    """Mark the run stopped with `reason` in meta.json. On a full disk the atomic write may find no
    room for its temporary file, so it falls back to rewriting meta.json in place (its blocks are
    already allocated); if that fails too, meta.json keeps "running" and the error still says why."""
    record = {**meta, "status": "stopped", "stop_reason": reason}
    try:
        write_json(layout.meta, record)
    except OSError:
        try:
            with open(layout.meta, "r+", encoding="utf-8") as f:
                f.write(json.dumps(record, indent=2) + "\n")
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass
