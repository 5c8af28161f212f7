"""Sweeps: validation messages, expansion into named jobs, and one tiny sweep through every executor
(local pool, submitit's local backend, a local Ray) with equal results and bit-equal weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from icl_lab.errors import ConfigError
from icl_lab.run import load_run
from icl_lab.sweep import Job, expand, load_sweep, run_job, run_sweep
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.trainer import fit

TINY = {"preset": "synthetic-2l", "seeds": [0], "then": ["analyze"],
        "grid": {"model.n_layers": [1, 2], "train.steps": [30], "train.n_checkpoints": [4]}}
SAME = ("name", "status", "error", "final_loss", "icl_score", "phase_change", "induction_heads")  # not run/seconds/trained


def write(tmp_path: Path, data: dict | str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("data, match", [
    ({"preset": "synthetic-9l"}, r"preset: unknown preset 'synthetic-9l'; choose one of: synthetic-2l"),
    ({"preset": "synthetic-2l", "grid": {"model.n_layerz": [1]}}, r"unknown grid field model.n_layerz; did you mean model.n_layers\?"),
    ({"preset": "synthetic-2l", "grid": {"modle.n_layers": [1]}}, r"unknown grid field modle.n_layers; did you mean model\?"),
    ({"preset": "synthetic-2l", "grid": {"model.n_layers.x": [1]}}, r"model.n_layers is a value, not a section; remove .x"),
    ({"preset": "synthetic-2l", "grid": {"model.n_layers": []}}, r"grid: model.n_layers has no values; give at least one"),
    ({"preset": "synthetic-2l", "grid": {"model.n_layers": 2}}, r"model.n_layers must be a list of values, e.g. \[2\]"),
    ({"preset": "synthetic-2l", "grid": {"model.n_layers": [2, 0]}},
     r"grid point model.n_layers=0: invalid ExperimentConfig: model.n_layers: Input should be greater than or equal to 1"),
    ({"preset": "synthetic-2l", "grid": {"seed": [1, 2]}}, r"grid field seed: list seeds under `seeds:` instead"),
    ({"preset": "synthetic-2l", "then": ["analyse"]}, r"then: unknown stage 'analyse'; choose from analyze, ablate, report"),
    ({"preset": "synthetic-2l", "seeds": [1, 1]}, r"seeds \[1, 1\] repeat a seed"),
    ({"preset": "synthetic-2l", "stages": ["analyze"]}, r"stages: unknown field; remove it"),
    ("preset: [\n", r"is not valid YAML \(line 2\)"),
    ("- synthetic-2l\n", r"must be a mapping with at least `preset:`"),
])
def test_bad_sweep_files_get_one_line_errors(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_sweep(write(tmp_path, data))
    assert "\n" not in str(err.value)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep file .*nope.yaml not found; pass a YAML file"):
        load_sweep(tmp_path / "nope.yaml")


def test_expansion_is_ordered_named_and_builds_each_config(tmp_path):
    spec = load_sweep(write(tmp_path, {"preset": "synthetic-2l", "seeds": [3, 1], "then": ["report", "analyze"],
                                       "grid": {"model.n_layers": [2, 1], "train.lr": [0.001, 0.003], "train.steps": [50]}}))
    jobs = expand(spec, tmp_path / "out")
    assert [j.name for j in jobs][:4] == ["n_layers=2-lr=0.001-seed3", "n_layers=2-lr=0.001-seed1",
                                          "n_layers=2-lr=0.003-seed3", "n_layers=2-lr=0.003-seed1"]
    assert len(jobs) == 8 and len({j.name for j in jobs}) == 8
    assert jobs == expand(spec, tmp_path / "out")  # deterministic
    last = jobs[-1]
    assert (last.config["model"]["n_layers"], last.config["train"]["lr"], last.config["train"]["steps"], last.config["seed"]) == (1, 0.003, 50, 1)
    assert last.out == str(tmp_path / "out" / "n_layers=1-lr=0.003-seed1")
    assert last.stages == ("analyze", "report")  # the order stages must run in, whatever the file says
    only_seeds = expand(load_sweep(write(tmp_path, {"preset": "synthetic-1l", "seeds": [0, 1]}, "s.yaml")), tmp_path)
    assert [j.name for j in only_seeds] == ["seed0", "seed1"]


def test_a_bad_trial_fails_alone_with_its_reason(tmp_path):
    res = run_job(Job("bad", {"model": {"n_layers": 1}}, str(tmp_path / "bad"), ()))
    assert res["status"] == "failed" and res["error"].startswith("invalid job bad:")


def _tiny_sweep(root: Path, executor: str, **kw) -> tuple[list[Job], list[dict]]:
    spec = load_sweep(write(root, TINY))
    jobs = expand(spec, root / executor)
    return jobs, run_sweep(jobs, root / executor, executor=executor, n_jobs=2, threads=1, **kw).trials


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return root, *_tiny_sweep(root, "local")


def _weights(run: str) -> dict:
    r = load_run(run)
    return load_file(str(r.layout.checkpoint(r.checkpoints[-1])))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert [{k: t[k] for k in SAME} for t in a] == [{k: t[k] for k in SAME} for t in b]
    for ta, tb in zip(a, b):
        wa, wb = _weights(ta["run"]), _weights(tb["run"])
        assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def test_local_sweep_trains_analyses_writes_sweep_json_and_reruns_as_a_no_op(local):
    root, jobs, trials = local
    assert [t["name"] for t in trials] == ["n_layers=1-seed0", "n_layers=2-seed0"]
    assert all(t["status"] == "ok" and t["trained"] for t in trials), trials
    assert all(isinstance(t["icl_score"], float) and t["final_loss"] < 5.0 for t in trials)
    assert all(load_run(t["run"]).checkpoints[-1] == 30 for t in trials)
    stored = json.loads((root / "local" / "sweep.json").read_text())
    assert stored["failed"] == 0 and stored["trials"] == trials and stored["executor"] == "local"
    again = run_sweep(jobs, root / "local", executor="local", n_jobs=1, threads=1).trials
    assert not any(t["trained"] for t in again)
    _assert_same(trials, again)


class _Killed(Exception):
    pass


def test_a_rerun_after_a_crash_finishes_only_the_missing_trials(local, tmp_path):
    """One trial never started, one stopped mid-run (its trainer died at step 20): the rerun trains
    the first, resumes the second, and both end on the local sweep's weights."""
    root, jobs, trials = local
    moved = [Job(j.name, j.config, str(tmp_path / j.name), j.stages) for j in jobs]

    def die(step, total, rec):
        if step == 20:
            raise _Killed

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's workers, so the resumed run matches to the bit
    try:
        with pytest.raises(_Killed):
            fit(ExperimentConfig.parse(moved[1].config), moved[1].out, progress=die)
    finally:
        torch.set_num_threads(threads)
    stopped = load_run(moved[1].out)
    assert 0 < stopped.checkpoints[-1] < 30
    kept = {s: stopped.layout.checkpoint(s).stat().st_mtime_ns for s in stopped.checkpoints}
    again = run_sweep(moved, tmp_path, executor="local", n_jobs=1, threads=1).trials
    assert [t["trained"] for t in again] == [True, True] and all(t["status"] == "ok" for t in again)
    _assert_same(trials, again)
    assert {s: stopped.layout.checkpoint(s).stat().st_mtime_ns for s in kept} == kept  # resumed, not retrained


def test_submitit_local_gives_the_same_results(local):
    pytest.importorskip("submitit")
    root, _, trials = local
    _assert_same(trials, _tiny_sweep(root, "slurm", slurm_cluster="local")[1])


def _listening() -> set[str]:
    """Addresses that this process's descendants (Ray's GCS, raylet, workers) listen on."""
    import psutil

    pids = {p.pid for p in psutil.Process().children(recursive=True)}
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_ray_local_gives_the_same_results(local):
    pytest.importorskip("ray")
    root, _, trials = local
    _assert_same(trials, _tiny_sweep(root, "ray")[1])


def test_a_ray_head_started_apart_runs_the_sweep_through_address(local, tmp_path):
    """`ray start --head` on 127.0.0.1 (no dashboard, usage stats off), then the sweep through
    `--address`: the same results as the local pool, bit for bit."""
    pytest.importorskip("ray")
    import shutil
    import socket

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray_bin is None:
        pytest.skip("the ray command is not installed next to this python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True, env=env)
    assert start.returncode == 0, start.stderr[-1500:]
    try:
        root, jobs, trials = local
        cluster = expand(load_sweep(write(tmp_path, TINY)), tmp_path / "cluster")
        res = run_sweep(cluster, tmp_path / "cluster", executor="ray", n_jobs=2, threads=1, address=f"127.0.0.1:{port}")
        _assert_same(trials, res.trials)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="Ray 2.60 binds its GCS, raylet and worker gRPC servers to all interfaces "
                   "even with _node_ip_address=127.0.0.1 (docs/sweeps.md); strict, so a fix shows up here")
def test_local_ray_listens_on_loopback_only(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    seen: list[set[str]] = []
    _tiny_sweep(tmp_path, "ray", progress=lambda res, done, total: seen.append(_listening()))  # while Ray runs
    assert seen[0] and seen[0] <= {"127.0.0.1"}, seen


def test_cli_dry_run_and_one_line_errors(tmp_path):
    path = write(tmp_path, TINY)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "icl_lab.cli", "sweep", *args], capture_output=True, text=True, cwd=tmp_path)

    r = cli(str(path), "--dry-run", "--json", "--out", "fam")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"name": f"n_layers={n}-seed0", "run": f"fam/n_layers={n}-seed0", "stages": ["analyze"]}
                                    for n in (1, 2)]
    assert not (tmp_path / "fam").exists()
    bad = cli(str(write(tmp_path, {"preset": "synthetic-2l", "grid": {"model.n_layerz": [1]}}, "bad.yaml")))
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "did you mean model.n_layers" in bad.stderr
    assert "Traceback" not in bad.stderr
    jobs0 = cli(str(path), "--jobs", "0")
    assert jobs0.returncode == 1 and "--jobs and --threads must be at least 1" in jobs0.stderr


def test_family_table_and_report_from_the_sweep_folder(local):
    import pandas as pd

    from icl_lab.report import write_report
    from icl_lab.report.family import family_table

    root, jobs, trials = local
    folder = root / "local"
    family = pd.read_parquet(folder / "metrics.parquet")
    assert set(family.trial) == {"n_layers=1-seed0", "n_layers=2-seed0"}
    assert set(family["model.n_layers"]) == {1, 2} and set(family.seed) == {0}
    one = load_run(trials[0]["run"]).store.read()
    assert len(family[family.trial == "n_layers=1-seed0"]) == len(one)  # the union, row for row
    table = family_table(folder)
    assert table["model.n_layers"].tolist() == [1, 2] and table.status.eq("ok").all()
    report = write_report([folder])
    page = report.path.read_text()
    assert report.path == folder / "report.html" and "family report" in page and "n_layers=2-seed0" in page
    assert "fig-family" in page and "phase-change onset" in page
