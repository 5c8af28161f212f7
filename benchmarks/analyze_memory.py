"""Peak memory and time of `icl-lab analyze`, `ablate` and `report` on a run, each in a fresh
process, read from the kernel (`wait4`'s peak RSS). Goal (issue #32): SmolLM2-135M (30 layers,
vocabulary 49,152, 256 windows of 512 tokens) analysed at <= 4 GB and <= 8 minutes.

    .venv/bin/python benchmarks/analyze_memory.py                          # SmolLM2-135M (imported once)
    .venv/bin/python benchmarks/analyze_memory.py --run runs/natural-2l-seed0 --ablate --report
    .venv/bin/python benchmarks/analyze_memory.py --before /tmp/old/src    # also the code in that src/ folder, same run
    .venv/bin/python benchmarks/analyze_memory.py --before /tmp/old/src --before-steps analyze report --report

With `--before SRC`, the commands named by `--before-steps` (default: all) also run with that source
tree first on PYTHONPATH (a checkout of an older commit), just before the current code, so the
before/after table comes from one sitting. A process whose resident set passes `--cap` is killed and reported as such (the old
SmolLM2 analysis reached 24 GB before the kernel killed it)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_measured(cmd: list[str], env: dict[str, str], cap_gb: float) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, outcome) of one command in a fresh process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        outcome = "ok"
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here, so its rusage is this child's own
            if pid:
                break
            try:
                rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1)) / 2**20
            except (OSError, AttributeError):
                rss = 0.0
            if rss > cap_gb and outcome == "ok":
                proc.kill()
                outcome = f"killed at {cap_gb:.0f} GB"
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        if outcome == "ok" and os.waitstatus_to_exitcode(status):
            err.seek(0)
            outcome = f"failed: {(err.read().strip().splitlines() or ['?'])[-1][:120]}"
    return wall, usage.ru_maxrss / 2**20, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/bench/smollm2"), help="run to measure (SmolLM2 is imported if missing)")
    ap.add_argument("--ablate", action="store_true", help="also `icl-lab ablate RUN --kind zero --examples N`")
    ap.add_argument("--ablate-examples", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="also `icl-lab report RUN`")
    ap.add_argument("--before", type=Path, help="an older src/ folder to measure in the same sitting")
    ap.add_argument("--before-steps", nargs="*", default=["analyze", "ablate", "report"], help="steps --before applies to")
    ap.add_argument("--cap", type=float, default=14.0, help="kill a process whose RSS passes this many GB")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "icl_lab.cli"]
    if not (args.run / "config.json").is_file():
        subprocess.run([*cli, "import", "--builtin", "smollm2-135m", "--out", str(args.run)], check=True)
    steps = [("analyze", [*cli, "analyze", str(args.run), "--json"])]
    if args.ablate:
        steps.append(("ablate", [*cli, "ablate", str(args.run), "--kind", "zero", "--examples", str(args.ablate_examples), "--json"]))
    if args.report:
        steps.append(("report", [*cli, "report", str(args.run)]))
    print(f"{args.run}: step | code | wall | peak RSS | outcome")
    for name, cmd in steps:
        # the old code first, so the current code's files are what the next step reads
        codes = ([("before", args.before)] if args.before and name in args.before_steps else []) + [("after", None)]
        for label, src in codes:
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
            if name == "analyze":
                shutil.rmtree(args.run / "analysis", ignore_errors=True)
            if src is not None and name == "ablate":
                cmd = [c for c in cmd if c not in ("--examples", str(args.ablate_examples))]  # the old CLI has no --examples
            wall, peak, outcome = run_measured(cmd, env, args.cap)
            print(f"| {name} | {label} | {wall:.0f} s | {peak:.2f} GB | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
