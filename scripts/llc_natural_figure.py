"""docs/llc-natural.png: one run's LLC over tokens (log axis) with the phase window shaded, the
previous-token and prefix-matching rises marked, unhealthy estimates hollow, and optional
longer-chain re-estimates (scripts/llc_longer_chains.py's JSON lines) as crosses.

    python scripts/llc_natural_figure.py runs/reproduce-natural/natural-2l-s4 --longer longer.jsonl --out docs/llc-natural.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import icl_lab  # noqa: E402
from icl_lab.run.results import read_llc  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--longer", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/llc-natural.png"))
    a = p.parse_args()
    run = icl_lab.load_run(a.run)
    s = read_llc(run)
    st = s["stages"]
    fig, ax = plt.subplots(figsize=(8, 4))
    tokens = [max(t, 1) for t in s["tokens"]]
    ax.plot(tokens, s["llc"], color="tab:purple", lw=1, zorder=1)
    for t, v, ok in zip(tokens, s["llc"], s["healthy"]):
        ax.scatter(t, v, s=30, zorder=2, facecolors="tab:purple" if ok else "white", edgecolors="tab:purple")
    if a.longer and a.longer.is_file():
        by_step = dict(zip(s["steps"], tokens))
        rows = [json.loads(line) for line in a.longer.read_text().splitlines() if line.startswith("{")]
        ax.scatter([by_step[r["step"]] for r in rows], [r["llc"] for r in rows], marker="x", color="black", zorder=3,
                   label=f"{rows[0]['draws']} draws per chain" if rows else None)
    w = st["phase_window"]
    ax.axvspan(w["start_tokens"], w["end_tokens"], color="tab:orange", alpha=0.15, label="phase window")
    for key, colour, name in (("previous_token_window", "tab:blue", "previous-token rise"),
                              ("prefix_matching_window", "tab:green", "prefix-matching rise")):
        if st.get(key):
            ax.axvline(st[key]["start_tokens"], color=colour, ls="--", lw=1, label=f"{name} (10%-90%)")
            ax.axvline(st[key]["end_tokens"], color=colour, ls="--", lw=1)
    ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("LLC (hollow: failed a health check)")
    ax.set_title(f"{run.path.name}: the LLC over training")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
