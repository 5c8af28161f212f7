"""Fault injection for the trainer, shared by the suite's short checks (tests/train/test_kill.py,
tests/train/test_disk_full.py) and their full versions (scripts/reliability.py).

`kill_and_resume` trains a tiny experiment through the real command line (`python -m icl_lab.cli
train`), sends SIGKILL at seeded random moments, resumes after each kill, and compares every
checkpoint and log row with an uninterrupted run of the same config, bit for bit. A kill lands at
one of three kinds of moment:

- "startup": a random delay after launch (imports, opening the run, resuming, the first steps);
- "step": as soon as the log shows a random target step (inside the training loop);
- "checkpoint": after a random target step, as soon as a checkpoint's temporary file exists (inside
  the checkpoint write: between `mkstemp` and `os.replace`); a kill counts as mid-write when the
  temporary file is still there afterwards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from icl_lab.io import TEMP_FILE
from icl_lab.train.checkpoint import checkpoint_problem
from icl_lab.train.layout import RunLayout
from icl_lab.train.records import read_log

MODES = ("startup", "step", "checkpoint")


def tiny_experiment(steps: int = 300, n_checkpoints: int = 60, name: str = "faults") -> dict:
    """A 2-layer attention-only model small enough that a step takes a few ms on a loaded CPU."""
    return dict(
        name=name, seed=3,
        model=dict(n_layers=2, d_model=32, n_heads=2, d_vocab=64, n_ctx=32, d_mlp=0, normalization="none", bias=False),
        data=dict(max_period=8, max_offset=4),
        train=dict(steps=steps, batch_size=8, lr=3e-3, warmup_steps=10, n_checkpoints=n_checkpoints, log_every=5, device="cpu"),
    )


def train_command(config: Path, out: Path) -> list[str]:
    """The command every launch runs: `--resume` starts a new run, or continues a killed one."""
    return [sys.executable, "-m", "icl_lab.cli", "train", "--config", str(config), "--out", str(out), "--resume"]


def launch(config: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread for every launch: same numerics, less contention
    with open(log, "ab") as f:
        return subprocess.Popen(train_command(config, out), stdout=f, stderr=subprocess.STDOUT, env=env)


def run_to_end(config: Path, out: Path, log: Path, timeout: float = 600) -> None:
    proc = launch(config, out, log)
    if proc.wait(timeout=timeout) != 0:
        raise RuntimeError(f"trainer exited {proc.returncode}: {log.read_text()[-2000:]}")


@dataclass
class Kill:
    mode: str
    target: int  # the log step the kill waited for (startup: the delay in ms)
    logged_step: int  # last log step on disk after the kill
    checkpoints: int  # checkpoints on disk after the kill
    temp_files: int  # temporary files left by the killed write
    damaged: int  # checkpoints failing their content hash after the kill (must be 0)


@dataclass
class KillReport:
    kills: list[Kill] = field(default_factory=list)
    resumes: int = 0  # launches that continued a killed run
    missed: int = 0  # planned kills that found the trainer already finished
    checkpoints_compared: int = 0
    bytes_compared: int = 0
    bytes_lost: int = 0  # tensor bytes missing or different from the uninterrupted run's (must be 0)
    log_rows_lost: int = 0  # log rows missing or different (step, tokens, loss, loss_repeat, lr)
    temp_files_after: int = 0  # temporary files left once the run finished (must be 0)
    tracebacks: int = 0  # in everything the trainers printed (must be 0)
    seconds: float = 0.0

    @property
    def mid_checkpoint(self) -> int:
        return sum(k.temp_files > 0 for k in self.kills)

    @property
    def damaged(self) -> int:
        return sum(k.damaged for k in self.kills)

    def as_dict(self) -> dict:
        return {"faults_injected": len(self.kills), "kills_mid_checkpoint_write": self.mid_checkpoint,
                "kills_by_mode": {m: sum(k.mode == m for k in self.kills) for m in MODES},
                "runs_resumed": self.resumes, "missed_kills": self.missed,
                "checkpoints_damaged_after_a_kill": self.damaged, "checkpoints_compared": self.checkpoints_compared,
                "bytes_compared": self.bytes_compared, "bytes_lost": self.bytes_lost, "log_rows_lost": self.log_rows_lost,
                "temp_files_after": self.temp_files_after, "tracebacks": self.tracebacks, "seconds": round(self.seconds, 1),
                "kills": [k.__dict__ for k in self.kills]}


def _last_logged_step(layout: RunLayout) -> int:
    try:
        with open(layout.log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 400))
            lines = f.read().split(b"\n")[:-1]
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _temp_files(layout: RunLayout) -> list[Path]:
    return [p for d in (layout.root, layout.checkpoint_dir) if d.is_dir() for p in d.iterdir() if TEMP_FILE.fullmatch(p.name)]


def _wait_and_kill(proc: subprocess.Popen, layout: RunLayout, mode: str, target: int, started_ns: int, timeout: float) -> bool:
    """Wait for the moment, then SIGKILL. False if the trainer finished first."""
    deadline = time.monotonic() + timeout
    if mode == "startup":
        time.sleep(target / 1000)
    else:
        # the new process has restored its checkpoint and cut the log back once meta.json is rewritten
        while not (layout.meta.is_file() and layout.meta.stat().st_mtime_ns >= started_ns):
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        while _last_logged_step(layout) < target:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        if mode == "checkpoint":
            while not any(TEMP_FILE.fullmatch(n) for n in os.listdir(layout.checkpoint_dir)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    return False
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _plan(kills: int, steps: int, modes: list[str], rng: random.Random) -> list[tuple[str, int]]:
    targets = iter(sorted(rng.sample(range(steps // 20, steps - steps // 20), kills)))
    return [(m, rng.randint(300, 3500) if m == "startup" else next(targets)) for m in modes]


def _tensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def compare_runs(reference: RunLayout, resumed: RunLayout, report: KillReport) -> None:
    """Every checkpoint and log row of `resumed` against `reference`: bytes lost and rows lost."""
    for step in reference.checkpoint_steps():
        meta_a, a = _tensors(reference.checkpoint(step))
        report.checkpoints_compared += 1
        size = sum(t.numel() * t.element_size() for t in a.values())
        report.bytes_compared += size
        if not resumed.checkpoint(step).is_file():
            report.bytes_lost += size
            continue
        meta_b, b = _tensors(resumed.checkpoint(step))
        for name, t in a.items():
            same = name in b and b[name].dtype == t.dtype and b[name].shape == t.shape and bool(
                (b[name].reshape(-1).view(torch.uint8) == t.reshape(-1).view(torch.uint8)).all())
            report.bytes_lost += 0 if same else t.numel() * t.element_size()
        if meta_a != meta_b:  # step, tokens, optimiser groups and the content hash
            report.bytes_lost += len(json.dumps(meta_a))
    keys = ("step", "tokens", "loss", "loss_repeat", "lr")
    rows_a = [tuple(json.dumps(r[k]) for k in keys) for r in read_log(reference.log).rows]
    rows_b = [tuple(json.dumps(r[k]) for k in keys) for r in read_log(resumed.log).rows]
    report.log_rows_lost = sum(a != b for a, b in zip(rows_a, rows_b)) + abs(len(rows_a) - len(rows_b))


def kill_and_resume(workdir: Path, kills: int, seed: int = 0, steps: int = 300, n_checkpoints: int = 60,
                    modes: list[str] | None = None, timeout: float = 300) -> KillReport:
    """Train the tiny experiment uninterrupted and again with `kills` SIGKILLs at seeded moments,
    resuming after each; return the comparison.

    Args:
        modes: the kind of each kill, in order (default: a seeded shuffle of the three kinds).
    """
    t0 = time.perf_counter()
    rng = random.Random(seed)
    modes = modes or [MODES[i % 3] for i in rng.sample(range(kills), kills)]
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.json"
    config.write_text(json.dumps(tiny_experiment(steps, n_checkpoints)))
    reference, killed = RunLayout(workdir / "reference"), RunLayout(workdir / "killed")
    console = workdir / "trainer-output.txt"
    straight = launch(config, reference.root, workdir / "reference-output.txt")  # alongside: one thread each
    report = KillReport()
    for mode, target in _plan(kills, steps, modes, rng):
        report.resumes += killed.config.is_file()  # this launch continues a killed run
        started = time.time_ns()
        proc = launch(config, killed.root, console)
        if not _wait_and_kill(proc, killed, mode, target, started, timeout):
            proc.wait(timeout=timeout)
            report.missed += 1
            continue
        report.kills.append(Kill(
            mode=mode, target=target, logged_step=_last_logged_step(killed), checkpoints=len(killed.checkpoint_steps()),
            temp_files=len(_temp_files(killed)),
            damaged=sum(checkpoint_problem(killed.checkpoint(s)) is not None for s in killed.checkpoint_steps())))
    report.resumes += 1
    run_to_end(config, killed.root, console, timeout)
    if straight.wait(timeout=timeout) != 0:
        raise RuntimeError(f"reference run exited {straight.returncode}: {(workdir / 'reference-output.txt').read_text()[-2000:]}")
    report.temp_files_after = len(_temp_files(killed))
    report.tracebacks = sum(p.read_text(errors="replace").count("Traceback") for p in workdir.glob("*-output.txt"))
    compare_runs(reference, killed, report)
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class DiskFullReport:
    size_kb: int
    exit_code: int  # of the trainer that ran out of space (must be 1: a one-line error)
    error_line: str
    tracebacks: int
    status: str
    stop_reason: str
    checkpoints_before: int  # checkpoints on the full disk when it stopped
    checkpoints_damaged: int  # of those, failing their hash or differing from the reference (must be 0)
    temp_files: int  # left on the full disk
    bytes_lost: int  # after freeing space and resuming, against the uninterrupted run (must be 0)
    log_rows_lost: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def mount_tmpfs(where: Path, size_kb: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)], check=True, capture_output=True)


def fill_the_disk(workdir: Path, size_kb: int, steps: int = 300, n_checkpoints: int = 60) -> DiskFullReport:
    """Train the tiny experiment through the CLI on a tmpfs of `size_kb` (root only) until the disk
    is full; check what it left, grow the tmpfs, resume, and compare with an uninterrupted run."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.json"
    config.write_text(json.dumps(tiny_experiment(steps, n_checkpoints)))
    reference = RunLayout(workdir / "reference")
    if not reference.meta.is_file():
        run_to_end(config, reference.root, workdir / "reference-output.txt")
    mnt = workdir / f"tmpfs-{size_kb}k"
    mount_tmpfs(mnt, size_kb)
    try:
        run = RunLayout(mnt / "run")
        output = workdir / f"full-{size_kb}k.txt"
        proc = launch(config, run.root, output)
        proc.wait(timeout=600)
        text = output.read_text(errors="replace")
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        meta = json.loads(run.meta.read_text()) if run.meta.is_file() else {}
        steps_on_disk = run.checkpoint_steps()
        damaged = 0
        for step in steps_on_disk:  # whole, and the same as the uninterrupted run's
            if checkpoint_problem(run.checkpoint(step)) is not None:
                damaged += 1
                continue
            (_, a), (_, b) = _tensors(reference.checkpoint(step)), _tensors(run.checkpoint(step))
            damaged += a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)
        temp = len(_temp_files(run))
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)  # free some space
        run_to_end(config, run.root, workdir / f"resume-{size_kb}k.txt")
        after = KillReport()
        compare_runs(reference, run, after)
        return DiskFullReport(size_kb=size_kb, exit_code=proc.returncode, error_line=errors[-1] if errors else "",
                              tracebacks=text.count("Traceback"), status=meta.get("status", ""),
                              stop_reason=meta.get("stop_reason", ""), checkpoints_before=len(steps_on_disk),
                              checkpoints_damaged=damaged, temp_files=temp, bytes_lost=after.bytes_lost,
                              log_rows_lost=after.log_rows_lost)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
