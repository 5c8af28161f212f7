"""The LLC of one natural-text run beside its phase window (docs/llc.md, "On natural text").

The full calibration grid (48 points x 3 checkpoints) costs over an hour on a 256-token text model
on 2 cores, so this calibrates on a reduced grid, stated in the output and in llc_calibration.json:
nβ per token (the theory's), γ in {1000, 3000}, ε in {1e-4, 3e-4}; then estimates the LLC at
--checkpoints log-spaced checkpoints with the chosen point.

    python scripts/llc_natural.py runs/reproduce-natural/natural-2l-s4 --checkpoints 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import icl_lab
from icl_lab.measure import SGLDSettings
from icl_lab.pipeline.llc import calibrate_run, llc_run

GRID = {"nbeta": (None,), "gamma": (1000.0, 3000.0), "lr": (1e-4, 3e-4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--checkpoints", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=200)
    a = p.parse_args()
    run = icl_lab.load_run(a.run)
    base = SGLDSettings(batch_size=a.batch_size, chains=a.chains, draws=a.draws)
    t0 = time.perf_counter()
    cal = calibrate_run(run, base, GRID, progress=lambda name, d, t: print(f"calibration {d}/{t}", flush=True))
    t1 = time.perf_counter()
    print(f"calibration {t1 - t0:.0f} s; chosen {cal.chosen.model_dump()} healthy={cal.healthy}", flush=True)
    record = {"run": str(run.path), **cal.to_json(), "grid": "reduced: " + json.dumps(GRID)}
    summary = llc_run(run, cal.chosen, checkpoints=a.checkpoints, executor="local", jobs=2, calibration=record,
                      progress=lambda name, d, t: print(f"llc {d}/{t}", flush=True))
    print(f"llc {time.perf_counter() - t1:.0f} s", flush=True)
    print(json.dumps({k: summary[k] for k in summary if k not in ("curve", "rows")}, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
