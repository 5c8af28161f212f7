"""Sweeps: validation messages, expansion into named jobs, and one tiny sweep through every executor
(local pool, submitit's local backend, a local Ray, a Ray head through --address) with equal results
and bit-equal weights; every Ray these tests start listens on loopback only and is stopped alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.run import load_run
from icl_lab.sweep import Job, expand, load_sweep, run_job, run_sweep
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.trainer import fit

TINY = {"preset": "synthetic-2l", "seeds": [0], "then": ["analyze"],
        "grid": {"model.n_layers": [1, 2], "train.steps": [30], "train.n_checkpoints": [4]}}
SRC = str(Path(icl_lab.__file__).parents[1])  # subprocesses import this checkout, not an installed copy
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
    model, train = last.config["model"], last.config["train"]
    assert (model["n_layers"], train["lr"], train["steps"], last.config["seed"]) == (1, 0.003, 50, 1)
    assert last.out == str(tmp_path / "out" / "n_layers=1-lr=0.003-seed1")
    assert last.stages == ("analyze", "report")  # the order stages must run in, whatever the file says
    only_seeds = expand(load_sweep(write(tmp_path, {"preset": "synthetic-1l", "seeds": [0, 1]}, "s.yaml")), tmp_path)
    assert [j.name for j in only_seeds] == ["seed0", "seed1"]


def test_a_bad_trial_fails_alone_with_its_reason(tmp_path):
    res = run_job(Job("bad", {"model": {"n_layers": 1}}, str(tmp_path / "bad"), ()))
    assert res["status"] == "failed" and res["error"].startswith("invalid job bad:")


def test_device_stays_out_of_the_runs_and_dtype_goes_in(tmp_path):
    spec = load_sweep(write(tmp_path, TINY))
    plain, placed = expand(spec, tmp_path / "o"), expand(spec, tmp_path / "o", device="cpu", dtype="fp32")
    assert [j.name for j in placed] == [j.name for j in plain] and all(j.device == "cpu" for j in placed)
    assert all(j.config["train"]["dtype"] == "fp32" for j in placed)
    for kw, match in (({"device": "tpu"}, r"unknown --device 'tpu'; choose auto, cpu or cuda"),
                      ({"dtype": "fp8"}, r"unknown --dtype 'fp8'; choose fp32 or bf16")):
        with pytest.raises(ConfigError, match=match):
            expand(spec, tmp_path / "o", **kw)
    with pytest.raises(ConfigError, match=r"the grid sweeps train.dtype; drop --dtype or the grid field"):
        expand(load_sweep(write(tmp_path, {**TINY, "grid": {"train.dtype": ["fp32", "bf16"]}}, "d.yaml")), tmp_path, dtype="fp32")
    job = Job("cpu", {**placed[0].config, "train": {**placed[0].config["train"], "steps": 4, "n_checkpoints": 2,
                                                   "warmup_steps": 1}}, str(tmp_path / "cpu"), (), device="cpu")
    assert run_job(job)["status"] == "ok"
    run = load_run(job.out)
    assert run.config.train.device == "auto" and run.meta["device"] == "cpu"  # where it ran: meta.json only
    assert run_job(Job(job.name, job.config, job.out, ()))["trained"] is False  # same run without --device


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


def _listeners(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening socket of these processes."""
    import psutil

    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _loopback_only(listening: set[tuple[str, int]]) -> bool:
    """Every address is 127.0.0.1, also as an IPv6 socket's IPv4-mapped ::ffff:127.0.0.1 (gRPC's form)."""
    import ipaddress

    ips = [ipaddress.ip_address(ip) for ip, _ in listening]
    return all((getattr(ip, "ipv4_mapped", None) or ip) == ipaddress.ip_address("127.0.0.1") for ip in ips)


def _ray_pids() -> set[int]:
    """This process (the driver) and its descendants: the GCS, raylet, agents and workers of a local Ray."""
    import psutil

    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.children(recursive=True))}


def test_a_local_ray_listens_on_loopback_only_and_gives_the_local_results(local):
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    root, _, trials = local
    seen: list[set] = []
    _, ray_trials = _tiny_sweep(root, "ray", progress=lambda res, done, total: seen.append(_listeners(_ray_pids())))
    _assert_same(trials, ray_trials)
    listening = set().union(*seen)
    assert len(listening) >= 3 and _loopback_only(listening), sorted(listening)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head` on 127.0.0.1 in a subprocess with its own temp dir, in single-node
    (loopback) mode; afterwards exactly the processes it started are killed, no other Ray."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    import shutil
    import tempfile

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray_bin is None:
        pytest.skip("the ray command is not installed next to this python")
    temp = Path(tempfile.mkdtemp(prefix="icl-ray-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    import secrets

    # token auth with a token of its own (never the user's ~/.ray/auth_token); the driver gets it too
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": SRC, **auth}
    with open(temp / "start.log", "w") as log:
        head = subprocess.Popen([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                                 f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Ray runtime started" not in (temp / "start.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (temp / "start.log").read_text()[-2000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", head, auth
    finally:
        mine = [head.pid, *(p.pid for p in psutil.Process(head.pid).children(recursive=True))] if head.poll() is None else []
        mine += [p.pid for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
        for pid in dict.fromkeys(mine):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_four_trial_sweep_through_address_of_a_loopback_head(local, ray_head, tmp_path):
    """`icl-lab sweep --executor ray --address` (a process of its own: Ray 2.60 cannot start a second
    driver in a process whose first one shut down): the trials match the local pool's, and the
    head's servers and the driver listen on loopback only."""
    import psutil

    address, head, auth = ray_head
    root, _, trials = local
    write(tmp_path, {**TINY, "seeds": [0, 1]})
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **auth}
    cli = subprocess.Popen([sys.executable, "-m", "icl_lab.cli", "sweep", "sweep.yaml", "--out", "cluster", "--executor", "ray",
                            "--address", address, "--jobs", "2", "--threads", "1", "--json"], cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: set = set()
    try:
        while cli.poll() is None:  # while it runs: the head's processes and the driver's
            pids = {head.pid, cli.pid}
            for root_pid in (head.pid, cli.pid):
                try:
                    pids |= {p.pid for p in psutil.Process(root_pid).children(recursive=True)}
                except psutil.NoSuchProcess:
                    pass
            seen |= _listeners(pids)
            time.sleep(0.5)
        out, err = cli.communicate()
    finally:
        if cli.poll() is None:  # a failure above: stop the driver this test started
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err[-2000:]
    res = json.loads(out)["trials"]
    assert [t["status"] for t in res] == ["ok"] * 4, res
    for t in res:
        t["run"] = str(tmp_path / t["run"])
    _assert_same(trials, [t for t in res if t["name"].endswith("seed0")])
    assert len(seen) >= 3 and _loopback_only(seen), sorted(seen)


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
