"""Re-estimate a run's LLC at chosen checkpoints with longer chains, to see whether estimates flagged
for drift were still climbing (docs/llc.md, "On natural text"). Uses the settings of the run's
llc.json with --draws instead; prints one JSON line per checkpoint. Nothing is stored.

    python scripts/llc_longer_chains.py runs/reproduce-natural/natural-2l-s4 --steps 889 1652 3111 6222 --draws 800
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import icl_lab
from icl_lab.measure import SGLDSettings, llc
from icl_lab.pipeline.llc import llc_tokens
from icl_lab.run.results import read_llc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--steps", type=int, nargs="+", required=True)
    p.add_argument("--draws", type=int, default=800)
    a = p.parse_args()
    run = icl_lab.load_run(a.run)
    settings = SGLDSettings(**read_llc(run)["settings"]["sgld"]).replace(draws=a.draws)
    tokens = llc_tokens(run)
    for step in a.steps:
        t0 = time.perf_counter()
        est = llc(run.model(step), tokens, settings)
        h = est.health()
        lo, hi = est.interval()
        print(json.dumps({"step": step, "draws": a.draws, "llc": round(est.value, 2), "lo": round(lo, 2), "hi": round(hi, 2),
                          "drift": round(h["drift"], 3), "drift_t": round(h["drift_t"], 1), "spread": round(h["spread"], 3),
                          "give_back": round(h["give_back"] or 0, 3), "healthy": h["ok"], "seconds": round(time.perf_counter() - t0)}),
              flush=True)


if __name__ == "__main__":
    main()
