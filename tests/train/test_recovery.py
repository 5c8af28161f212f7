"""Resume survives damage: a corrupt checkpoint makes it start from the newest good one (and say
so), a torn last log line is dropped with a warning, temporary files of a killed write are
removed, and a run directory another trainer holds is refused with a one-line error."""

import json
import os
import subprocess
import sys

import pytest
import torch

from icl_lab.errors import ConfigError, CorruptFileError, IclLabWarning, RunInUseError
from icl_lab.run import load_run
from icl_lab.train import ExperimentConfig, RunLayout
from icl_lab.train.checkpoint import load_train_state, load_weights
from icl_lab.train.lock import hold_run, lock_holder
from icl_lab.train.trainer import fit
from tests.faults import tiny_experiment

CFG = ExperimentConfig.parse(tiny_experiment(steps=40, n_checkpoints=12))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return load_run(fit(CFG, tmp_path_factory.mktemp("ref") / "run"))


@pytest.fixture
def finished(tmp_path, reference):
    import shutil

    return load_run(shutil.copytree(reference.path, tmp_path / "run"))


def flip_a_byte(path, at=-20):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def same_as(run, reference):
    assert run.checkpoints == reference.checkpoints and run.meta["status"] == "complete"
    for step in reference.checkpoints:
        a, b = load_weights(run.layout.checkpoint(step)), load_weights(reference.layout.checkpoint(step))
        assert all(torch.equal(a[k], b[k]) for k in b), step
    sa, sb = (load_train_state(r.layout.checkpoint(40)).optimizer["state"] for r in (run, reference))
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sb for k in sb[i])
    assert run.log.loss.tolist() == reference.log.loss.tolist()


def test_a_corrupt_latest_checkpoint_makes_resume_fall_back_and_say_so(finished, reference):
    stopped = {**finished.meta, "status": "stopped"}  # as if it had stopped there
    finished.layout.meta.write_text(json.dumps(stopped))
    flip_a_byte(finished.layout.checkpoint(40))
    before = finished.checkpoints[-2]
    with pytest.warns(IclLabWarning, match=rf"^checkpoint step_0000040.safetensors is truncated or corrupt \(content hash mismatch\); "
                                           rf"resuming from step {before}, which rewrites it$"):
        fit(CFG, finished.path, resume=True)
    same_as(load_run(finished.path), reference)


def test_a_corrupt_middle_checkpoint_of_a_finished_run_is_rewritten(finished, reference):
    mid = reference.checkpoints[len(reference.checkpoints) // 2]
    flip_a_byte(finished.layout.checkpoint(mid), at=-3)
    later = sum(s > mid for s in reference.checkpoints)
    msg = rf"step_{mid:07d}.safetensors .*resuming from step \d+, which rewrites it and the {later} checkpoints after it$"
    with pytest.warns(IclLabWarning, match=msg):
        fit(CFG, finished.path, resume=True)
    same_as(load_run(finished.path), reference)


def test_every_checkpoint_corrupt_starts_again_from_scratch(finished, reference):
    for step in finished.checkpoints:
        flip_a_byte(finished.layout.checkpoint(step))
    with pytest.warns(IclLabWarning, match=r"step_0000000.safetensors .*resuming from scratch, which rewrites it and the"):
        fit(CFG, finished.path, resume=True)
    same_as(load_run(finished.path), reference)


def test_a_damaged_log_line_or_meta_json_is_a_one_line_error(finished):
    lines = finished.layout.log.read_text().splitlines()
    lines[2] = lines[2][:10] + "#" + lines[2][11:]
    finished.layout.log.write_text("\n".join(lines) + "\n")
    finished.layout.meta.write_text(json.dumps({**finished.meta, "status": "stopped"}))
    msg = (r"^run/train_log.jsonl line 3 is damaged \(not a training-log row\); "
           r"delete that line and the ones after it, then rerun with --resume$")
    with pytest.raises(CorruptFileError, match=msg):
        fit(CFG, finished.path, resume=True)
    with pytest.raises(CorruptFileError, match=msg):
        load_run(finished.path).log
    finished.layout.meta.write_bytes(b'{"seed": 3, "stat')
    msg = r"^run/meta.json is damaged \(.*\); restore it, or delete it to continue without its data check$"
    with pytest.raises(CorruptFileError, match=msg):
        load_run(finished.path).meta
    with pytest.raises(CorruptFileError, match=msg):
        fit(CFG, finished.path, resume=True)


def test_a_torn_last_log_line_is_dropped_on_resume_with_a_warning(finished, reference):
    finished.layout.meta.write_text(json.dumps({**finished.meta, "status": "stopped"}))
    with open(finished.layout.log, "a") as f:
        f.write('{"step": 41, "tokens": 10')
    assert len(load_run(finished.path).log) == len(reference.log)  # readers leave it out quietly
    msg = r"^run/train_log.jsonl ended in a line cut off mid-write \('\{\"step\": 41, \"tokens\": 10'\); dropped it$"
    with pytest.warns(IclLabWarning, match=msg):
        fit(CFG, finished.path, resume=True)
    same_as(load_run(finished.path), reference)


def test_temporary_files_of_a_killed_write_are_removed(tmp_path, reference):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".train.lock").write_text("123\n")  # killed before config.json was written
    (out / ".config.json.k3j2l1x0.tmp").write_text("{")
    fit(CFG, out, resume=True)
    (out / "checkpoints" / ".step_0000040.safetensors.a1b2c3d4.tmp").write_bytes(b"half")
    (out / ".meta.json.zzzzzzzz.tmp").write_text("{")
    meta = {**load_run(out).meta, "status": "stopped"}
    (out / "meta.json").write_text(json.dumps(meta))
    fit(CFG, out, resume=True)
    assert not list(out.rglob("*.tmp"))
    same_as(load_run(out), reference)


def test_a_folder_with_other_files_is_still_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not an icl-lab run directory"):
        fit(CFG, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no lock file left in someone's folder


def test_a_second_trainer_gets_a_one_line_error(tmp_path):
    layout = RunLayout(tmp_path / "run")
    with hold_run(layout):
        assert lock_holder(layout) == f"process {os.getpid()}"
        with pytest.raises(RunInUseError, match=rf"^{layout.root} is being trained by process {os.getpid()}; "
                                                r"wait for it to finish, or stop it and rerun with --resume$"):
            fit(CFG, layout.root)
        (tmp_path / "c.json").write_text(json.dumps(tiny_experiment(steps=40, n_checkpoints=12)))
        for resume in ([], ["--resume"]):
            done = subprocess.run([sys.executable, "-m", "icl_lab.cli", "train", "--config", str(tmp_path / "c.json"),
                                   "--out", str(layout.root), *resume], capture_output=True, text=True)
            assert done.returncode == 1 and done.stderr.startswith(f"error: {layout.root} is being trained by process {os.getpid()}; ")
            assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert lock_holder(layout) is None
    fit(CFG, layout.root, resume=True)  # free again once the holder is gone


def test_the_cli_says_so_in_one_line(finished, reference):
    finished.layout.meta.write_text(json.dumps({**finished.meta, "status": "stopped"}))
    flip_a_byte(finished.layout.checkpoint(40))
    done = subprocess.run([sys.executable, "-m", "icl_lab.cli", "train", "--resume", "--out", str(finished.path)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 0 and "Traceback" not in done.stderr
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: checkpoint step_0000040.safetensors is truncated or corrupt (content hash mismatch); "
                        f"resuming from step {reference.checkpoints[-2]}, which rewrites it"], done.stderr
    same_as(load_run(finished.path), reference)
