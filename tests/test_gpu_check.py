"""`scripts/gpu_check.sh` (issue #31): its CPU-only part runs here, so the script a lent GPU will
run is known to work end to end; on a GPU the same checks compare the device with the CPU."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_its_cpu_part_and_prints_one_table():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("check") and len(lines) == 7, r.stdout
    assert all(line.endswith("| ok") for line in lines[1:]), r.stdout
    assert "DDP (gloo, 1 process) final loss gap" in r.stdout and "all-head ablation on cpu vs cpu" in r.stdout


def test_without_cuda_it_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        return
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no CUDA device here" in r.stderr
