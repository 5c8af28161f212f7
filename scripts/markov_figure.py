"""docs/markov-stages.png: the KL of the model's predictions to the uniform, unigram and bigram
strategies against training step, one panel per seed, the stages shaded (needs matplotlib, the
`bench` extra). Reads the runs `scripts/markov_seeds.py` trained.

    .venv/bin/python scripts/markov_figure.py [--runs runs/markov/k3-s0 runs/markov/k3-s1 runs/markov/k3-s2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"uniform": "#999999", "unigram": "#1f77b4", "bigram": "#d62728"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", default=[Path(f"runs/markov/k3-s{s}") for s in range(3)])
    ap.add_argument("--out", type=Path, default=Path("docs/markov-stages.png"))
    args = ap.parse_args()
    fig, axes = plt.subplots(1, len(args.runs), figsize=(4.2 * len(args.runs), 3.4), sharey=True)
    for ax, run in zip(axes, args.runs):
        table = pd.read_parquet(run / "analysis" / "metrics.parquet")
        stages = json.loads((run / "analysis" / "markov.json").read_text())["stages"]
        for st in stages:  # shade each stage's step range in its strategy's colour
            ax.axvspan(max(st["start"], 1), max(st["end"], 1), color=COLORS[st["stage"]], alpha=0.08, lw=0)
        for name, colour in COLORS.items():
            kl = table[table.metric == f"markov.kl.{name}"].sort_values("step")
            ax.plot(kl.step.clip(lower=1), kl.value, color=colour, label=f"KL to {name}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(run.name)
        ax.set_xlabel("step")
    axes[0].set_ylabel("KL(strategy || model), nats")
    axes[0].legend(fontsize=8)
    fig.suptitle("markov-2l: uniform -> unigram -> bigram (shaded: the nearest strategy)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
