"""The full fault-injection run of issue #21, whose figures docs/reliability.md quotes:

1. kill -9 at 10 seeded random moments (at startup, inside the training loop, inside a checkpoint
   write), resuming after each, compared bit for bit with an uninterrupted run;
2. a full disk: real tmpfs mounts of several sizes, and one already full before the run starts
   (root only; otherwise the injected-ENOSPC tests of tests/train/test_disk_full.py run instead);
3. the hypothesis fuzzers of tests/test_fuzz.py with more examples per target.

    .venv/bin/python scripts/reliability.py [--kills 10] [--seed 21] [--fuzz-examples 1000] [--out runs/reliability]

Prints a summary and writes OUT/results.json. The suite runs the short versions
(tests/train/test_kill.py, tests/train/test_disk_full.py, tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.faults: the harness the suite's short versions share

from tests.faults import fill_the_disk, kill_and_resume, launch, mount_tmpfs, tiny_experiment  # noqa: E402


def kills(out: Path, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    modes = ["startup"] * (n // 5) + ["checkpoint"] * (2 * n // 5)
    modes += ["step"] * (n - len(modes))
    rng.shuffle(modes)
    return kill_and_resume(out, kills=n, seed=seed, steps=600, n_checkpoints=100, modes=modes).as_dict()


def can_mount(out: Path) -> bool:
    probe = out / "probe"
    try:
        mount_tmpfs(probe, 64)
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        return False
    subprocess.run(["umount", "-l", str(probe)], check=False)
    return True


def full_before_start(out: Path) -> dict:
    """A tmpfs with no room at all: the very first write (config.json) fails, as one line."""
    mnt = out / "tmpfs-full"
    mount_tmpfs(mnt, 64)
    try:
        fd = os.open(mnt / "ballast", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # full
            pass
        finally:
            os.close(fd)
        config = out / "config.json"
        config.write_text(json.dumps(tiny_experiment()))
        proc = launch(config, mnt / "run", out / "full-before-start.txt")
        proc.wait(timeout=300)
        text = (out / "full-before-start.txt").read_text(errors="replace")
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        return {"exit_code": proc.returncode, "error_line": errors[-1] if errors else "", "tracebacks": text.count("Traceback")}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def disk_full(out: Path) -> dict:
    if not can_mount(out):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/train/test_disk_full.py", "-k", "not tmpfs"],
                              cwd=ROOT, capture_output=True, text=True)
        return {"method": "injected ENOSPC (no tmpfs: not root)", "pytest_exit": done.returncode, "output": done.stdout[-400:]}
    runs = [fill_the_disk(out, kb).as_dict() for kb in (700, 1200, 2000, 3500)]
    return {"method": "tmpfs", "runs": runs, "full_before_start": full_before_start(out)}


def fuzz(out: Path, examples: int) -> dict:
    report = out / "fuzz.json"
    env = {**os.environ, "ICL_LAB_FUZZ_EXAMPLES": str(examples), "ICL_LAB_FUZZ_REPORT": str(report)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "tests/test_fuzz.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    counts = json.loads(report.read_text()) if report.is_file() else {}
    return {**counts, "pytest_exit": done.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "pytest_tail": done.stdout.strip().splitlines()[-1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--fuzz-examples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reliability")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    t0 = time.perf_counter()
    results = {"kill": kills(args.out / "kill", args.kills, args.seed)}
    print(f"kill -9: {json.dumps({k: v for k, v in results['kill'].items() if k != 'kills'})}", flush=True)
    results["disk_full"] = disk_full(args.out / "disk-full")
    print(f"disk full: {json.dumps(results['disk_full'])}", flush=True)
    results["fuzz"] = fuzz(args.out, args.fuzz_examples)
    print(f"fuzz: {json.dumps(results['fuzz'])}", flush=True)

    k, d, f = results["kill"], results["disk_full"], results["fuzz"]
    full_runs = d.get("runs", [])
    summary = {
        "faults_injected": k["faults_injected"] + len(full_runs) + ("full_before_start" in d),
        "runs_resumed": k["runs_resumed"] + len(full_runs),
        "bytes_lost": k["bytes_lost"] + sum(r["bytes_lost"] for r in full_runs),
        "log_rows_lost": k["log_rows_lost"] + sum(r["log_rows_lost"] for r in full_runs),
        "checkpoints_damaged": k["checkpoints_damaged_after_a_kill"] + sum(r["checkpoints_damaged"] for r in full_runs),
        "fuzz_inputs": sum(f.get("inputs", {}).values()),
        "fuzz_checks": sum(f.get("cases", {}).values()),
        "tracebacks": (k["tracebacks"] + sum(r["tracebacks"] for r in full_runs) + d.get("full_before_start", {}).get("tracebacks", 0)
                       + sum(f.get("tracebacks", {}).values()) + (f["pytest_exit"] != 0)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    results["summary"] = summary
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"written: {args.out / 'results.json'}")
    sys.exit(0 if summary["bytes_lost"] == 0 and summary["tracebacks"] == 0 and summary["checkpoints_damaged"] == 0 else 1)


if __name__ == "__main__":
    main()
