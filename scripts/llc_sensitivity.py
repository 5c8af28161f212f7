"""Issue #27, item 6: does the LLC's stage story survive a second healthy setting? Reads a run's
calibration grid (`icl-lab llc RUN --calibrate`), prints the grid table, picks the chosen point and
the next-preferred healthy point with a different nβ convention (else a different γ), measures
each run under both, and prints the stages, the LLC's direction in the score rises and the
two-part-bump verdict for each (setting, run). The chosen setting runs last, so each run's
llc.json holds it. Writes the records to --out.

    python scripts/llc_sensitivity.py runs/llc/synthetic-2l-s{0,1,2} --calibration runs/llc/synthetic-2l-s0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import icl_lab
from icl_lab.measure import SGLDSettings
from icl_lab.measure.llc_calibration import choose
from icl_lab.pipeline.llc import llc_run, read_calibration


def kind(nbeta) -> str:
    return "per token (n/log n)" if nbeta is None else "per sequence (devinterp)" if nbeta == "sequences" else f"fixed {nbeta}"


def grid_table(cal: dict) -> list[str]:
    steps = cal["steps"]
    points: dict[tuple, dict] = {}
    for r in cal["grid"]:
        points.setdefault((str(r["nbeta_setting"]), r["gamma"], r["lr"]), {})[r["step"]] = r
    lines = ["| nβ | γ | ε | " + " | ".join(f"step {s}" for s in steps) + " | healthy |", "|---|---|---|" + "---|" * (len(steps) + 1)]
    for (nb, g, lr), by in points.items():
        cells = []
        for s in steps:
            r = by[s]
            marks = "".join(m for m, word in (("d", "drifts"), ("b", "basin"), ("s", "disagree"), ("n", "not positive"),
                                                             ("x", "diverged"))
                            if any(word in p for p in r["problems"]))
            cells.append(f"{r['llc']:.1f} {marks}".strip())
        ok = all(by[s]["ok"] for s in steps)
        lines.append(f"| {by[steps[0]]['nbeta']:.0f} ({kind(None if nb == 'None' else nb if nb == 'sequences' else float(nb))}) "
                     f"| {g:g} | {lr:g} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    return lines


def alternative(cal: dict, chosen: dict) -> dict:
    """The next-preferred healthy point: a different nβ convention if one is healthy, else a different γ."""
    rows = [r for r in cal["grid"] if r["nbeta_setting"] != chosen["nbeta_setting"]]
    alt, ok = choose(rows)
    if not ok:
        alt, ok = choose([r for r in cal["grid"] if r["gamma"] != chosen["gamma"]])
    return alt if ok else None


def tok(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:,.0f}k"


def stages_table(records: list[dict]) -> list[str]:
    """One row per (setting, run): health, the curve's start, peak and end, the stages, the LLC's
    direction in each score rise, and the two-part-bump verdict."""
    lines = ["| setting | seed | healthy | LLC start → peak (step) → end | stages | in the prefix-matching rise "
             "| in the previous-token rise | two-part bump |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        llc, steps = r["llc"], r["steps"]
        peak = max(range(len(llc)), key=lambda i: llc[i])
        stages = "; ".join(f"{d} {tok(a)}–{tok(b)}" for d, a, b in r["stages"])
        rise = [f"{x['direction']}" if x else "-" for x in (r["pm_rise"], r["prev_rise"])]
        lines.append(f"| nβ {r['nbeta']:.0f} ({r['nbeta_kind']}), γ {r['gamma']:g}, ε {r['lr']:g} | {r['run'].rsplit('-s', 1)[-1]} "
                     f"| {r['healthy']} | {llc[0]:.1f} → {llc[peak]:.1f} ({steps[peak]}) → {llc[-1]:.1f} | {stages} "
                     f"| {rise[0]} | {rise[1]} | {'yes' if r['two_part_bump'] else 'no'} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--calibration", type=Path, required=True)
    p.add_argument("--checkpoints", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("runs/llc/sensitivity.json"))
    p.add_argument("--table", action="store_true", help="Print the stages table from --out, measuring nothing.")
    a = p.parse_args()
    if a.table:
        print("\n".join(stages_table(json.loads(a.out.read_text())["records"])))
        return
    cal = read_calibration(a.calibration)
    print("\n".join(grid_table(cal)), flush=True)
    chosen, _ = choose(cal["grid"])
    alt = alternative(cal, chosen)
    settings = [("alternative", alt), ("chosen", chosen)] if alt else [("chosen", chosen)]
    records = []
    for label, point in settings:
        # the chosen settings' chains, draws, burn-in and batch, as `icl-lab llc --calibration` runs them
        s = SGLDSettings(**{**cal["chosen"], "lr": point["lr"], "gamma": point["gamma"], "nbeta": point["nbeta_setting"]})
        for path in a.runs:
            run = icl_lab.load_run(path)
            summary = llc_run(run, s, checkpoints=a.checkpoints, executor="local", jobs=2, calibration={**cal, "used": label})
            st = summary["stages"]
            rec = {"setting": label, "lr": s.lr, "gamma": s.gamma, "nbeta": point["nbeta"], "nbeta_kind": kind(s.nbeta),
                   "run": run.path.name, "healthy": f"{sum(summary['healthy'])}/{len(summary['healthy'])}",
                   "stages": [(x["direction"], x["start_tokens"], x["end_tokens"]) for x in st["stages"]],
                   "phase_window": st["phase_window"], "pm_rise": st["llc_in_prefix_matching_rise"],
                   "prev_rise": st["llc_in_previous_token_rise"], "previous_token_first": st["previous_token_first"],
                   "two_part_bump": st["two_part_bump"], "llc": summary["llc"], "steps": summary["steps"]}
            records.append(rec)
            print(json.dumps({k: rec[k] for k in ("setting", "gamma", "lr", "nbeta_kind", "run", "healthy", "stages",
                                                  "previous_token_first", "two_part_bump")}, default=str), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"grid": grid_table(cal), "records": records}, indent=1, default=str))
    print("\n".join(stages_table(records)))


if __name__ == "__main__":
    main()
