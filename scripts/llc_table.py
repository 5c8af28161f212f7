"""The tables of docs/llc.md from runs that `icl-lab llc` measured: per run, the LLC curve's start,
peak and end, its stages, the score rises and the phase window, the LLC's direction in each rise,
per-head LLC and the health counts, and the time taken.

    python scripts/llc_table.py runs/llc/synthetic-2l-s0 runs/llc/synthetic-2l-s1 runs/llc/synthetic-2l-s2
"""

from __future__ import annotations

import sys

import icl_lab
from icl_lab.run.results import read_llc


def tok(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e3:,.0f}k"


def window(w: dict | None) -> str:
    return "none" if not w else f"{tok(w['start_tokens'])}–{tok(w['end_tokens'])}"


def main(paths: list[str]) -> None:
    print("| run | LLC start → peak (step) → end | stages (direction, tokens) | phase window | prefix-matching rise: LLC | "
          "previous-token rise: LLC | prev-token first | two-part bump |")
    print("|---|---|---|---|---|---|---|---|")
    heads = []
    for p in paths:
        run = icl_lab.load_run(p)
        s = read_llc(run)
        llc, steps, st = s["llc"], s["steps"], s["stages"]
        peak = max(range(len(llc)), key=lambda i: llc[i])
        stages = "; ".join(f"{x['direction']} {tok(x['start_tokens'])}–{tok(x['end_tokens'])}" for x in st["stages"])
        pm, prev = st["llc_in_prefix_matching_rise"], st["llc_in_previous_token_rise"]
        print(f"| {run.path.name} | {llc[0]:.1f} → {llc[peak]:.1f} ({steps[peak]}) → {llc[-1]:.1f} | {stages} | "
              f"{window(st['phase_window'])} | {window(st['prefix_matching_window'])}: {pm['direction'] if pm else '-'} "
              f"| {window(st['previous_token_window'])}: {prev['direction'] if prev else '-'} | {st['previous_token_first']} "
              f"| {st['two_part_bump']} |")
        t = run.store.read()
        h = t[t.metric == "llc.head"]
        for (layer, head), g in h.groupby(["layer", "head"]):
            g = g.sort_values("step")
            i = int(g.value.to_numpy().argmax())
            heads.append((run.path.name, f"L{int(layer)}H{int(head)}", g.value.iloc[i], int(g.step.iloc[i]), g.value.iloc[-1],
                          g.lo.iloc[-1], g.hi.iloc[-1]))
        healthy = sum(s["healthy"])
        hh = t[t.metric == "llc.head.healthy"]
        timing = s.get("timing", {})
        print(f"|  | healthy: {healthy}/{len(llc)} whole-model, {int(hh.value.sum())}/{len(hh)} per-head; "
              f"{timing.get('seconds', 0):.0f} s for {timing.get('checkpoints')} checkpoints "
              f"({timing.get('executor')}, {timing.get('jobs')} jobs) |  |  |  |  |  |  |")
    print()
    print("| run | head | peak LLC (step) | final LLC [95% over chains] |")
    print("|---|---|---|---|")
    for name, head, pv, ps, fv, lo, hi in heads:
        print(f"| {name} | {head} | {pv:.1f} ({ps}) | {fv:.2f} [{lo:.2f}, {hi:.2f}] |")


if __name__ == "__main__":
    main(sys.argv[1:])
