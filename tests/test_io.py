import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from icl_lab.io import json_text, write_json, write_safetensors
from icl_lab.train.layout import RunLayout

WRITER = textwrap.dedent(
    """
    import sys, torch
    from icl_lab.io import write_safetensors
    path = sys.argv[1]
    for i in range(1000):
        # ~64 MB per write, so a kill lands mid-write
        write_safetensors(path, {"w": torch.full((16_000_000,), float(i))}, {"version": str(i)})
        print("done", i, flush=True)
    """
)


def test_atomic_write_survives_a_kill_mid_write(tmp_path):
    target = tmp_path / "checkpoints" / "step_0000001.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("done 0")
        # wait until the next write is in flight (its temp file exists), then kill -9
        deadline = time.time() + 30
        while not any(p.name.endswith(".tmp") for p in target.parent.iterdir()):
            assert time.time() < deadline, "writer never started a second write"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    tensors = load_file(str(target))  # the destination holds one whole version, never half of one
    w = tensors["w"]
    assert w.shape == (16_000_000,) and bool((w == w[0]).all())
    # the leftover temp file is not mistaken for a checkpoint
    assert RunLayout(tmp_path).checkpoint_steps() == [1]


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json(path, {"a": Unserialisable()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_safetensors_round_trip_with_metadata(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": torch.arange(6).view(2, 3).t()}, {"k": "v"})  # non-contiguous input
    assert torch.equal(load_file(str(path))["a"], torch.arange(6).view(2, 3).t())


def test_a_failed_write_names_the_destination_and_a_full_disk_is_enospc(tmp_path, monkeypatch):
    import errno

    from safetensors import SafetensorError

    import icl_lab.io
    from icl_lab.io import atomic_write

    def no_room(p):
        raise OSError(errno.ENOSPC, "No space left on device", str(p))

    with pytest.raises(OSError, match=r"No space left on device: '.*/out.json'$") as info:
        atomic_write(tmp_path / "out.json", no_room)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "out.json")

    def rust_says_so(tensors, filename, metadata=None):  # what safetensors raises on a full disk
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(icl_lab.io, "save_file", rust_says_so)
    with pytest.raises(OSError) as info:
        write_safetensors(tmp_path / "t.safetensors", {"a": torch.zeros(2)})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "t.safetensors")
    assert os.listdir(tmp_path) == []


def test_clean_temp_files_removes_only_what_atomic_write_leaves(tmp_path):
    from icl_lab.io import clean_temp_files

    for name in (".step_0000001.safetensors.k2j3h4g5.tmp", ".meta.json.abc_defg.tmp", "keep.tmp", "step.safetensors", ".hidden"):
        (tmp_path / name).write_text("x")
    removed = clean_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".meta.json.abc_defg.tmp", ".step_0000001.safetensors.k2j3h4g5.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "keep.tmp", "step.safetensors"]
    assert clean_temp_files(tmp_path / "missing") == []


def test_line_log_flushes_each_line_and_reports_a_failed_sync(tmp_path, monkeypatch):
    import errno

    from icl_lab.io import LineLog

    path = tmp_path / "log.jsonl"
    with LineLog(path) as log:
        log.append('{"step": 1}')
        assert path.read_text() == '{"step": 1}\n'  # on disk at once, before any close
    with LineLog(path) as log:
        log.append('{"step": 2}')
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing, raising=False)
    monkeypatch.setattr(os, "fsync", failing)
    log = LineLog(path)
    log.append("x")
    with pytest.raises(OSError, match="Input/output error"):
        log.close()


def test_the_training_log_is_on_disk_before_each_checkpoint(tmp_path, monkeypatch):
    """What docs/reliability.md promises an OS crash cannot lose: every log row at or before the
    newest checkpoint. The log is fdatasync'ed in the trainer's own thread before each checkpoint
    is written (before, only a background thread synced it, with no order against checkpoints)."""
    import threading

    import importlib

    import icl_lab

    trainer = importlib.import_module("icl_lab.train.trainer")  # `icl_lab.train` is also a function's name

    synced: dict[int, int] = {}  # fd -> bytes durable, counted only for syncs the training thread waited for
    main = threading.get_ident()
    real_sync = getattr(os, "fdatasync", os.fsync)

    def sync(fd):
        real_sync(fd)
        if threading.get_ident() == main:
            synced[fd] = os.fstat(fd).st_size

    monkeypatch.setattr(os, "fdatasync", sync, raising=False)
    monkeypatch.setattr(os, "fsync", sync)
    checked = []
    real_save = trainer.save_checkpoint

    def save(path, *args, **kwargs):
        log = path.parent.parent / "train_log.jsonl"
        if log.exists() and log.stat().st_size:
            assert max(synced.values(), default=0) >= log.stat().st_size, \
                "a checkpoint was written before the log rows before it were durable"
            checked.append(path.name)
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 60, "warmup_steps": 5, "n_checkpoints": 6, "log_every": 5})
    icl_lab.train(cfg, out=tmp_path / "r")
    assert len(checked) >= 4


def test_json_text_is_strict_json_with_undefined_numbers_as_null():
    """`--json` output is read by jq and browsers, which refuse json.dumps's bare NaN."""
    text = json_text({"share": float("nan"), "ci": [float("-inf"), 0.5], "rows": ({"v": float("inf")},), "n": 3})

    def refuse(constant):
        raise AssertionError(f"{constant} in the output")

    assert json.loads(text, parse_constant=refuse) == {"share": None, "ci": [None, 0.5], "rows": [{"v": None}], "n": 3}
