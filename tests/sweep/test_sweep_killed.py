"""A real kill: `icl-lab sweep` and its workers killed with SIGKILL mid-way (as the OOM killer or a
scheduler would), then run again: finished trials are reused untouched, only the unfinished ones
train, and the family table holds every trial once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

import icl_lab
from icl_lab.run import load_run

SRC = str(Path(icl_lab.__file__).parents[1])  # the subprocess imports this checkout, not an installed copy
SWEEP = {"preset": "synthetic-1l", "seeds": [0, 1, 2], "then": ["analyze"],
         "grid": {"model.d_model": [32], "train.steps": [60], "train.batch_size": [8], "train.n_checkpoints": [4]}}


def _sweep(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "icl_lab.cli", "sweep", "sweep.yaml", "--out", "fam", "--jobs", "1",
                             *args], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: the driver and its pool's workers


def _finished(tmp_path: Path) -> set[str]:
    try:
        trials = json.loads((tmp_path / "fam" / "sweep.json").read_text())["trials"]
    except (OSError, ValueError):  # not written yet (it is replaced atomically, never seen half-written)
        return set()
    return {t["name"] for t in trials if t["status"] == "ok"}


def test_a_sweep_killed_mid_way_reruns_only_its_unfinished_trials(tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    proc = _sweep(tmp_path)
    deadline = time.monotonic() + 900  # generous: a loaded 2-core machine takes minutes to start python
    while not _finished(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, at once, with no chance to clean up
    proc.communicate()
    done = _finished(tmp_path)
    assert 0 < len(done) < 3, f"the kill came too late or too early: {done}"
    stamps = {name: {p.name: p.stat().st_mtime_ns for p in (tmp_path / "fam" / name / "checkpoints").iterdir()}
              for name in done}

    again = _sweep(tmp_path, "--json")
    try:
        out, err = again.communicate(timeout=900)
    finally:
        if again.poll() is None:  # only what this test started: the rerun's process group
            os.killpg(again.pid, signal.SIGKILL)
    assert again.returncode == 0, err[-2000:]
    trials = json.loads(out)["trials"]
    assert [t["name"] for t in trials] == ["seed0", "seed1", "seed2"] and all(t["status"] == "ok" for t in trials)
    assert all(not t["trained"] for t in trials if t["name"] in done)  # reused, not retrained
    assert trials[-1]["trained"]  # never started before the kill
    for name, before in stamps.items():
        assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "fam" / name / "checkpoints").iterdir()} == before

    family = pd.read_parquet(tmp_path / "fam" / "metrics.parquet")
    for t in trials:
        own = load_run(t["run"] if Path(t["run"]).is_absolute() else tmp_path / t["run"]).store.read()
        assert len(family[family.trial == t["name"]]) == len(own)  # every trial's rows, once
    assert set(family.trial) == {"seed0", "seed1", "seed2"}
