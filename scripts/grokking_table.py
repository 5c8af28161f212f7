"""Print the markdown table of docs/grokking.md from measured grokking runs.

    python scripts/grokking_table.py runs/grokking/p113-f0.3-wd1-s{0,1,2} runs/grokking/p113-f0.3-wd0-s0

Each run must have been measured (`icl-lab grok` or `icl-lab grok --run RUN`); the table reads
`analysis/grokking.json` and the training log only.
"""

from __future__ import annotations

import sys

from icl_lab.run.files import open_run_files
from icl_lab.organisms.grokking.results import grokking_summary, grokking_table


def _window(w: dict | None) -> str:
    return f"{w['start']:,}–{w['end']:,}" if w else "not found"


def _drop(d: dict | None) -> str:
    return f"{d['start']:,}–{d['end']:,}" if d else "none"


def row(path: str) -> str:
    files = open_run_files(path)
    s, wide = grokking_summary(files), grokking_table(files)
    ph, f = s["phases"], s["final"]
    groks = wide[wide.test_accuracy >= 0.99].step
    cells = [files.path.name, f"{s['weight_decay']:g}", f"{f['train_accuracy']:.1%}", f"{f['test_accuracy']:.1%}",
             f"{groks.iloc[0]:,}" if len(groks) else "never", f"{f['test_loss']:.2g}",
             ", ".join(map(str, s["key_freqs"])) or "none", _window(ph["memorisation"]), _window(ph["circuit_formation"]),
             _window(ph["cleanup"]), _drop(ph["restricted_loss_drop"]), _drop(ph["test_loss_drop"]),
             "yes" if ph["restricted_before_test"] else "no"]
    return "| " + " | ".join(cells) + " |"


def main(paths: list[str]) -> None:
    print("| run | wd | train acc | test acc | first step test acc ≥ 99% | final test loss | key frequencies | memorisation | "
          "circuit formation | cleanup | restricted-loss drop | test-loss drop | restricted falls first |")
    print("|" + "---|" * 13)
    for p in paths:
        print(row(p))


if __name__ == "__main__":
    main(sys.argv[1:])
