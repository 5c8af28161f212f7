"""Data-parallel training with torchrun and DDP (gloo, loopback): a 2-process run is the same run as
one process on the same global batch (to 1e-5 after 20 AdamW steps), through a script and through
the documented `torchrun -m icl_lab.cli train`; rank 0 alone writes the run directory, and a DDP
run stopped mid-way resumes bit-identically."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from icl_lab.run import load_run
from icl_lab.train.checkpoint import load_weights
from icl_lab.train.trainer import fit
from tests.train.test_resume import small_experiment

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")
WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).parents[2]
PYTHONPATH = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # this checkout's icl_lab, and tests/ for the worker


def torchrun(cfg, out: Path, mode: str = "fresh", nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": PYTHONPATH}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(WORKER), json.dumps(cfg.model_dump(mode="json")), str(out), mode]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode and "(SIGABRT)" in r.stderr and mode != "resume":
        # Seen once in a loaded full suite (rank 1 got SIGABRT; its own message was cut off; not reproduced
        # in 21 reruns): one retry, with the first failure kept visible as a warning. A wrong result or a
        # second crash still fails.
        warnings.warn(f"torchrun rank aborted, retrying once: {_worker_lines(r.stderr)}", stacklevel=2)
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return r


def _worker_lines(stderr: str) -> str:
    """The ranks' own lines of a torchrun's stderr (its launcher's traceback comes last and is long)."""
    own = [line for line in stderr.splitlines() if "torch/distributed/elastic" not in line and not line.startswith(("  ", "Traceback"))]
    return "\n".join(own)[-3000:]


@pytest.fixture(scope="module")
def cfg():
    return small_experiment(steps=20).replace(train={"batch_size": 8, "n_checkpoints": 8, "log_every": 2})


@pytest.fixture(scope="module")
def ddp_run(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    r = torchrun(cfg, out)
    assert r.returncode == 0, _worker_lines(r.stderr)
    return load_run(out)


def test_two_processes_match_one_on_the_same_global_batch(cfg, ddp_run, tmp_path):
    torch.set_num_threads(1)
    single = load_run(fit(cfg, tmp_path / "single"))
    assert single.checkpoints == ddp_run.checkpoints
    a, b = load_weights(single.layout.checkpoint(20)), load_weights(ddp_run.layout.checkpoint(20))
    # The key bias shifts every score of a query equally, so softmax ignores it: its exact gradient is
    # 0, its computed one is rounding noise, and AdamW turns noise into lr-sized steps. Any change of
    # summation order (DDP's all-reduce, another thread count) moves it; it changes no output.
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if not k.endswith("attn.b_K"))
    assert worst <= 1e-5, f"DDP weights differ by {worst:.2e} after 20 steps"
    assert ddp_run.log.step.tolist() == single.log.step.tolist()
    assert max(abs(x - y) for x, y in zip(ddp_run.log.loss, single.log.loss)) < 1e-5  # the logged loss is the global batch's
    assert ddp_run.meta["world_size"] == 2 and ddp_run.meta["status"] == "complete"


def _worst(a_dir: Path, b_dir: Path, step: int) -> float:
    a, b = load_weights(load_run(a_dir).layout.checkpoint(step)), load_weights(load_run(b_dir).layout.checkpoint(step))
    return max(float((a[k] - b[k]).abs().max()) for k in a if not k.endswith("attn.b_K"))  # b_K: see above


def test_the_documented_launch_torchrun_m_icl_lab_cli_train(cfg, tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m icl_lab.cli train`, as docs/scale.md launches it:
    the same run as one process, to the documented 1e-5, and every rank leaves its process group."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": PYTHONPATH}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "icl_lab.cli",
           "train", "--config", str(config), "--out", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "destroy_process_group" not in r.stderr  # torch warns about a group left behind at exit
    torch.set_num_threads(1)
    fit(cfg, tmp_path / "single")
    ddp = load_run(tmp_path / "ddp")
    assert ddp.meta["world_size"] == 2 and ddp.meta["status"] == "complete"
    assert ddp.config.train.device == "auto"  # where it ran is in meta.json, not in the config that reruns it
    assert _worst(tmp_path / "single", tmp_path / "ddp", 20) <= 1e-5
    single = load_run(tmp_path / "single")
    assert max(abs(x - y) for x, y in zip(ddp.log.loss, single.log.loss)) < 1e-5


def test_ddp_run_stopped_mid_way_resumes_bit_identically(cfg, ddp_run, tmp_path):
    out = tmp_path / "resumed"
    stopped = torchrun(cfg, out, "stop-at-13")
    assert stopped.returncode != 0
    part = load_run(out)
    assert part.meta["status"] == "stopped" and part.checkpoints[-1] < 13
    resumed = torchrun(cfg, out, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = load_run(out)
    for step in run.checkpoints:
        a, b = load_weights(ddp_run.layout.checkpoint(step)), load_weights(run.layout.checkpoint(step))
        assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ at step {step}"
    assert run.log.loss.tolist() == ddp_run.log.loss.tolist()


def test_a_batch_that_does_not_split_is_refused_with_the_fix(cfg, tmp_path):
    r = torchrun(cfg.replace(train={"batch_size": 9}), tmp_path / "odd")
    assert r.returncode != 0 and "does not split over 2 processes; use a multiple of 2" in r.stderr


def test_a_masked_loss_is_normalised_by_the_global_batch(tmp_path):
    """Out-of-context facts train on their answers only (a loss mask whose count differs between the
    ranks' slices): DDP must still give the one-process gradient."""
    import icl_lab

    cfg = icl_lab.get_preset("oocr-reversal").replace(train={"steps": 12, "batch_size": 16, "n_checkpoints": 4, "log_every": 3,
                                                             "warmup_steps": 2})
    r = torchrun(cfg, tmp_path / "ddp")
    assert r.returncode == 0, r.stderr[-2000:]
    torch.set_num_threads(1)
    single = load_run(fit(cfg, tmp_path / "single"))
    ddp = load_run(tmp_path / "ddp")
    a, b = load_weights(single.layout.checkpoint(12)), load_weights(ddp.layout.checkpoint(12))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if not k.endswith("attn.b_K"))
    assert worst <= 1e-5, f"masked-loss DDP weights differ by {worst:.2e}"
    assert max(abs(x - y) for x, y in zip(ddp.log.loss, single.log.loss)) < 1e-5
