"""The LLC at a run's checkpoints: serial in one process (torch using every core) against checkpoint
fan-out over the local process pool (one worker per core, one thread each), in the same run, with
the estimates compared. Times include loading each checkpoint and starting the workers.

    python benchmarks/llc_fanout.py [--run runs/llc/synthetic-2l-s0] [--checkpoints 8] [--repeats 3]

Without --run it trains synthetic-2l (seed 0) into runs/bench/llc-synthetic-2l first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import icl_lab
from icl_lab.measure.llc import SGLDSettings
from icl_lab.pipeline import fan_out, walk
from icl_lab.pipeline.llc import LLC, llc_steps

# the settings the calibration chose on synthetic-2l (docs/llc.md)
SETTINGS = SGLDSettings(lr=3e-4, gamma=1000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    if args.run is None:
        args.run = "runs/bench/llc-synthetic-2l"
        icl_lab.train(icl_lab.get_preset("synthetic-2l"), out=args.run, resume=True)
    run = icl_lab.load_run(args.run)
    steps = llc_steps(run.checkpoints, args.checkpoints)
    m = LLC(SETTINGS)

    def serial():
        torch.set_num_threads(cores)
        return walk(run, [m], steps=steps)

    def fanned():
        return fan_out(run, "llc", {"settings": SETTINGS.model_dump()}, steps, "local", n_jobs=cores, threads=1)

    times: dict[str, list[float]] = {"serial": [], "fan-out": []}
    values = {}
    for _ in range(args.repeats):
        for name, fn in (("serial", serial), ("fan-out", fanned)):
            t = time.perf_counter()
            rows = fn()
            times[name].append(time.perf_counter() - t)
            values[name] = rows[rows.metric == "llc"].sort_values("step").value.to_numpy()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{run.path.name}: {len(steps)} checkpoints, {SETTINGS.chains} chains x {SETTINGS.draws} draws, {cores} cores, "
          f"median of {args.repeats}")
    for name, t in med.items():
        print(f"  {name:8s} {t:7.1f} s  ({t / len(steps):5.2f} s per checkpoint)")
    print(f"  fan-out is {med['serial'] / med['fan-out']:.2f}x the serial speed")
    diff = float(np.max(np.abs(values["serial"] - values["fan-out"]) / np.maximum(np.abs(values["serial"]), 1e-9)))
    print(f"  largest relative difference between the two paths' estimates: {diff:.1e} "
          f"(serial uses {cores} torch threads, each task 1)")


if __name__ == "__main__":
    main()
