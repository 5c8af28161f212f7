"""A full disk stops training with a one-line error, status `stopped` and the reason in meta.json,
and leaves every earlier checkpoint intact; once there is room, --resume finishes the run bit for
bit. Injected ENOSPC (the error safetensors' writer really raises, and a torn log row), and a real
tmpfs filled up (root only; scripts/reliability.py runs it too)."""

import errno
import os
import shutil
import subprocess
import uuid

import pytest
import torch
from safetensors import SafetensorError

import icl_lab.io
from icl_lab.errors import IclLabWarning, StorageError
from icl_lab.run import load_run
from icl_lab.train import ExperimentConfig
from icl_lab.train.checkpoint import checkpoint_problem, load_weights
from icl_lab.train.trainer import fit
from tests.faults import tiny_experiment

CFG = ExperimentConfig.parse(tiny_experiment(steps=40, n_checkpoints=14))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return load_run(fit(CFG, tmp_path_factory.mktemp("ref") / "run"))


def assert_intact_and_equal(run, reference) -> None:
    for step in run.checkpoints:
        assert checkpoint_problem(run.layout.checkpoint(step)) is None
        a, b = load_weights(run.layout.checkpoint(step)), load_weights(reference.layout.checkpoint(step))
        assert all(torch.equal(a[k], b[k]) for k in b), step
    assert not [p for p in run.path.rglob(".*.tmp")]


def test_disk_full_in_a_checkpoint_write(tmp_path, monkeypatch, reference):
    real, calls = icl_lab.io.save_file, []

    def fills_the_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 7:  # the 7th checkpoint: half written, then no space left, as safetensors reports it
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(icl_lab.io, "save_file", fills_the_disk)
    out = tmp_path / "run"
    with pytest.raises(StorageError, match=r"^disk full writing checkpoints/step_\d{7}\.safetensors \(no space left on device\); "
                                           r"free some space, then continue with `icl-lab train --resume --out .*/run`$"):
        fit(CFG, out)
    run = load_run(out)
    assert run.meta["status"] == "stopped" and run.meta["stop_reason"].startswith("StorageError: disk full writing checkpoints/step_")
    assert len(run.checkpoints) == 6
    assert_intact_and_equal(run, reference)
    monkeypatch.setattr(icl_lab.io, "save_file", real)
    fit(CFG, out, resume=True)
    assert_intact_and_equal(load_run(out), reference)
    assert load_run(out).checkpoints == reference.checkpoints and load_run(out).meta["status"] == "complete"


def test_disk_full_in_a_log_write_tears_a_row_that_resume_drops(tmp_path, monkeypatch, reference):
    real, rows = icl_lab.io.LineLog.append, []

    def fills_the_disk(self, line):
        rows.append(line)
        if len(rows) == 8:
            self._file.write(line[:17])  # the part that fitted
            self._file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._file.name)
        real(self, line)

    monkeypatch.setattr(icl_lab.io.LineLog, "append", fills_the_disk)
    out = tmp_path / "run"
    with pytest.raises(StorageError, match=r"^disk full writing train_log.jsonl \(no space left on device\)"):
        fit(CFG, out)
    assert load_run(out).meta["stop_reason"].startswith("StorageError: disk full writing train_log.jsonl")
    assert len(load_run(out).log) == 7  # the torn row is left out when the log is read
    monkeypatch.setattr(icl_lab.io.LineLog, "append", real)
    with pytest.warns(IclLabWarning, match=r"train_log.jsonl ended in a line cut off mid-write \('\{\"step\": .*'\); dropped it$"):
        fit(CFG, out, resume=True)
    run = load_run(out)
    assert_intact_and_equal(run, reference)
    assert run.log.step.tolist() == reference.log.step.tolist() and run.log.loss.tolist() == reference.log.loss.tolist()


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1024k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_tmpfs(small_tmpfs, reference):
    out = small_tmpfs / "run"
    with pytest.raises(StorageError, match=r"^disk full writing .* \(no space left on device\); free some space"):
        fit(CFG, out)  # ~160 kB a checkpoint: the 1 MB disk fills after about six
    run = load_run(out)
    assert run.meta["status"] == "stopped" and run.meta["stop_reason"].startswith("StorageError: disk full writing ")
    assert 3 <= len(run.checkpoints) < len(reference.checkpoints)
    assert_intact_and_equal(run, reference)
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)  # free some space
    fit(CFG, out, resume=True)
    run = load_run(out)
    assert run.checkpoints == reference.checkpoints and run.meta["status"] == "complete"
    assert_intact_and_equal(run, reference)
    assert run.log.loss.tolist() == reference.log.loss.tolist()
