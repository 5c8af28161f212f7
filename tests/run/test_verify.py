"""`icl-lab verify RUN` checks every file of a run and names the fix for each problem."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from icl_lab.errors import CheckpointError
from icl_lab.run.verify import verify_run
from icl_lab.train import ExperimentConfig, RunLayout
from icl_lab.train.lock import hold_run
from icl_lab.train.trainer import fit
from tests.faults import tiny_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return fit(ExperimentConfig.parse(tiny_experiment(steps=20, n_checkpoints=6)), tmp_path_factory.mktemp("v") / "run")


@pytest.fixture
def run(trained, tmp_path):
    return RunLayout(shutil.copytree(trained, tmp_path / "run"))


def test_a_whole_run_passes(run):
    report = verify_run(run.root)
    assert report.ok, report.problems
    assert [c.file for c in report.checks] == ["config.json", "meta.json", "train_log.jsonl", "checkpoints/"]
    assert report.checks[3].detail.startswith(f"{len(run.checkpoint_steps())} of {len(run.checkpoint_steps())} whole, steps 0..20")


def test_every_damage_is_a_problem_with_its_fix(run):
    ckpt = run.checkpoint(run.checkpoint_steps()[2])
    data = bytearray(ckpt.read_bytes())
    data[-5] ^= 1
    ckpt.write_bytes(bytes(data))
    with open(run.log, "a") as f:
        f.write('{"step": 2')
    (run.checkpoint_dir / ".step_0000020.safetensors.abcdefgh.tmp").write_bytes(b"x")
    (run.analysis_dir).mkdir()
    (run.summary).write_text("{")
    meta = json.loads(run.meta.read_text())
    run.meta.write_text(json.dumps({**meta, "status": "running"}))  # killed: nobody holds the lock
    problems = {p.file: p for p in verify_run(run.root).problems}
    assert set(problems) == {"meta.json", "train_log.jsonl", str(ckpt.relative_to(run.root)), "analysis/summary.json",
                             "checkpoints/.step_0000020.safetensors.abcdefgh.tmp"}
    resume = f"rerun `icl-lab train --resume --out {run.root}`"
    assert problems["meta.json"].detail == "status running, but no trainer holds the run's lock: it was killed"
    assert problems["meta.json"].fix == resume
    assert problems[str(ckpt.relative_to(run.root))].detail == "truncated or corrupt (content hash mismatch)"
    assert problems[str(ckpt.relative_to(run.root))].fix == resume
    assert problems["train_log.jsonl"].fix == resume + " (it drops the line)"
    assert problems["analysis/summary.json"].fix == f"rerun `icl-lab analyze {run.root}`"
    with hold_run(run):  # while a trainer holds the lock, "running" is the truth
        assert "meta.json" not in {p.file for p in verify_run(run.root).problems}


def test_a_broken_config_or_meta_is_reported_not_raised(run):
    run.config.write_text('{"model": ')
    run.meta.write_bytes(b"\xff\xfe")
    problems = {p.file: p.detail for p in verify_run(run.root).problems}
    assert problems["config.json"].startswith("config.json is not valid JSON") or "is not valid JSON" in problems["config.json"]
    assert problems["meta.json"].startswith("run/meta.json is damaged (")
    run.config.unlink()
    assert verify_run(run.root).problems[0].detail == "missing"
    with pytest.raises(CheckpointError, match="run directory .* not found"):
        verify_run(run.root / "nope")


def test_the_cli_prints_one_line_per_problem_and_exits_1(run):
    cli = [sys.executable, "-m", "icl_lab.cli", "verify", str(run.root)]
    assert subprocess.run(cli, capture_output=True).returncode == 0
    ckpt = run.checkpoint(run.checkpoint_steps()[-1])
    ckpt.write_bytes(ckpt.read_bytes()[:-7])
    done = subprocess.run(cli, capture_output=True, text=True, env={"COLUMNS": "300", "PATH": ""})
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("problem:")]
    assert len(lines) == 1, done.stdout
    assert re.fullmatch(rf"problem: checkpoints/{ckpt.name}: truncated or corrupt \(.*file not fully covered\); "
                        rf"fix: rerun `icl-lab train --resume --out {run.root}`", lines[0]), lines[0]
