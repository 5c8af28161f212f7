"""Time `icl-lab analyze` over every checkpoint of a full-length `synthetic-2l` run (goal: <= 60 s
on 2 cores for its ~100 checkpoints). Trains the run first if it is missing.

    python benchmarks/analyze_checkpoints.py [--run runs/bench/synthetic-2l-fp32-seed0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import icl_lab
from icl_lab.pipeline import analyze


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/bench/synthetic-2l-fp32-seed0"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (args.run / "config.json").exists():
        icl_lab.train(icl_lab.get_preset("synthetic-2l"), out=args.run)
    run = icl_lab.load_run(args.run)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        summary = analyze([run])[str(run.path)]
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    n = len(run.checkpoints)
    print(f"analyze {run.path}: {n} checkpoints, median {med:.1f} s over {args.repeats} runs "
          f"({n / med:.1f} checkpoints/s; goal <= 60 s: {'met' if med <= 60 else 'NOT met'})")
    print(f"  phase change detected: {summary['phase_change']['detected']} "
          f"({summary['phase_change']['start_tokens']}-{summary['phase_change']['end_tokens']} tokens)")


if __name__ == "__main__":
    main()
