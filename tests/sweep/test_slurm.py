"""SLURM through submitit: the `slurm:` block (user values win, unknown keys named with the valid
ones), the job array sized by --jobs, and the real CLI path on submitit's local backend, with a job
killed mid-run reported with its reason and resumed by the rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import icl_lab
from icl_lab.engines import map_tasks, slurm_keys, slurm_parameters
from icl_lab.errors import ConfigError
from icl_lab.run import load_run

submitit = pytest.importorskip("submitit")
SRC = str(Path(icl_lab.__file__).parents[1])  # the subprocesses import this checkout, not an installed copy
# a small model, slow enough that the test can kill its job between two checkpoints
LONG = {"preset": "synthetic-1l", "seeds": [0, 1],
        "grid": {"model.d_model": [32], "train.steps": [400], "train.batch_size": [8], "train.n_checkpoints": [6]},
        "slurm": {"timeout_min": 5, "mem_gb": 1, "slurm_partition": "debug", "name": "fam"}}


def test_user_values_override_the_defaults_and_options_size_the_array():
    params = slurm_parameters({"timeout_min": 5, "slurm_partition": "gpu", "mem_gb": 2}, n_jobs=3, threads=2)
    assert params == {"name": "icl-lab", "timeout_min": 5, "slurm_partition": "gpu", "mem_gb": 2, "cpus_per_task": 2,
                      "slurm_array_parallelism": 3}
    assert slurm_parameters({}, 1, 1)["timeout_min"] == 60
    ex = submitit.AutoExecutor(folder="unused", cluster="debug")
    ex.update_parameters(**params)  # once a TypeError: update_parameters() got multiple values for 'timeout_min'


def test_the_sbatch_script_carries_the_block_and_an_array_sized_by_jobs(tmp_path):
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    params = slurm_parameters({"timeout_min": 5, "slurm_partition": "gpu", "slurm_qos": "low"}, n_jobs=2, threads=1)
    slurm = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
    generic = SlurmExecutor._equivalence_dict()
    slurm |= {generic[k]: v for k, v in params.items() if k in generic}
    script = _make_sbatch_string(command="true", folder=tmp_path, map_count=4, **slurm)
    for line in ("--time=5", "--partition=gpu", "--qos=low", "--cpus-per-task=1", "--array=0-3%2", "--job-name=icl-lab"):
        assert f"#SBATCH {line}" in script, line


@pytest.mark.parametrize("block, match", [
    ({"timeout": 5}, r"^slurm: unknown key\(s\) timeout; valid keys: .*\btimeout_min\b.*\bslurm_partition\b"),
    ({"slurm_partiton": "gpu"}, r"^slurm: unknown key\(s\) slurm_partiton; valid keys: "),
    ({"slurm_array_parallelism": 4}, r"^slurm: slurm_array_parallelism is set by --jobs; remove it from the sweep file$"),
    ({"cpus_per_task": 4}, r"^slurm: cpus_per_task is set by --threads; remove it"),
])
def test_a_bad_key_is_one_line_naming_the_valid_ones(block, match):
    with pytest.raises(ConfigError, match=match) as err:
        slurm_parameters(block, 1, 1)
    assert "\n" not in str(err.value)
    assert {"timeout_min", "mem_gb", "slurm_partition", "slurm_time"} <= set(slurm_keys())


class _Job:
    """A stand-in for a submitit job: done after `polls` calls to done()."""

    running = 0
    most = 0

    def __init__(self, value):
        self.value, self.polls = value, 2
        _Job.running += 1
        _Job.most = max(_Job.most, _Job.running)

    def done(self):
        self.polls -= 1
        if self.polls == 0:
            _Job.running -= 1
        return self.polls <= 0

    def result(self):
        return self.value


def test_the_local_backend_keeps_only_jobs_tasks_running(monkeypatch):
    class Executor:
        _valid_parameters = submitit.AutoExecutor._valid_parameters  # the keys icl-lab checks the block against

        def __init__(self, folder, cluster):
            pass

        def update_parameters(self, **kw):
            pass

        def submit(self, fn, task, threads):
            return _Job(task * 10)

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    out = dict(map_tasks(print, [1, 2, 3, 4, 5], "slurm", n_jobs=2, slurm_cluster="local"))
    assert out == {0: 10, 1: 20, 2: 30, 3: 40, 4: 50} and _Job.most == 2


def _cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "icl_lab.cli", "sweep", "sweep.yaml", "--out", "fam", "--executor", "slurm",
                             "--slurm-cluster", "local", "--jobs", "1", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Kill what this test started, if it still runs after a failure: the CLI's process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _kill_job_at_first_checkpoint(tmp_path: Path) -> list[int]:
    """SIGKILL the running job (submitit's controller and its task) once its run has a checkpoint
    past step 0; returns the steps the run had then."""
    import psutil

    run, jobs = tmp_path / "fam" / "seed0", tmp_path / "fam" / ".submitit"
    deadline = time.monotonic() + 900  # generous: a loaded 2-core machine takes minutes to start python
    while time.monotonic() < deadline:
        steps = [int(p.stem.removeprefix("step_")) for p in (run / "checkpoints").glob("step_*.safetensors")]
        ids = [p.name for p in jobs.glob("*") if p.name.isdigit()] if jobs.is_dir() else []
        if len(ids) == 1 and any(s > 0 for s in steps):
            controller = psutil.Process(int(ids[0]))
            for p in [*controller.children(recursive=True), controller]:
                p.send_signal(signal.SIGKILL)
            return sorted(steps)
        time.sleep(0.05)
    raise AssertionError("the first trial's job never reached a checkpoint")


def test_cli_on_submitits_local_backend_reports_a_killed_job_and_resumes_it(tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(LONG))
    proc = _cli(tmp_path)
    try:
        before = _kill_job_at_first_checkpoint(tmp_path)
        out, err = proc.communicate(timeout=900)
    finally:
        _stop(proc)
    assert proc.returncode == 1, err[-2000:]
    trials = json.loads((tmp_path / "fam" / "sweep.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["failed", "ok"]
    assert trials[0]["error"].startswith("job ") and "ended before it returned (state INTERRUPTED;" in trials[0]["error"]
    assert trials[0]["error"].endswith("rerun to resume it") and "seed0 failed:" in out.replace("\n", " ")
    assert "Traceback" not in err
    run = load_run(tmp_path / "fam" / "seed0")
    kept = {s: run.layout.checkpoint(s).stat().st_mtime_ns for s in run.checkpoints if s in before}
    again = _cli(tmp_path, "--json")
    try:
        out, err = again.communicate(timeout=900)
    finally:
        _stop(again)
    assert again.returncode == 0, err[-2000:]
    trials = json.loads(out)["trials"]
    assert [(t["status"], t["trained"]) for t in trials] == [("ok", True), ("ok", False)]
    assert load_run(tmp_path / "fam" / "seed0").checkpoints[-1] == 400
    assert {s: run.layout.checkpoint(s).stat().st_mtime_ns for s in kept} == kept  # resumed, not retrained


def test_cli_refuses_an_unknown_slurm_key_in_one_line(tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**LONG, "slurm": {"time_min": 5}}))
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "sweep", "sweep.yaml", "--executor", "slurm", "--dry-run"],
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "slurm: unknown key(s) time_min; valid keys: " in r.stderr and "timeout_min" in r.stderr
