"""`icl-lab markov`: measure Markov-chain runs (`icl-lab markov RUN...`), or train them first
(`icl-lab markov --train --seed 0 --seed 1 --out DIR`), and print each run's stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from icl_lab.cli_bars import Bars
from icl_lab.errors import ConfigError

console = Console()


def record(r) -> dict:
    """What `--json` prints for one run."""
    s = r.summary
    return {"run": str(r.run.path), "seed": s["seed"], "stages": s["stages"], "order": s["order"], "in_order": s["in_order"],
            "reaches_bigram": s["reaches_bigram"], "final_kl": s["final"]["kl"], "sih": s["sih"], "seconds": round(r.seconds, 1)}


def markov_cmd(
    runs: Optional[list[Path]] = typer.Argument(None, help="Markov-chain run directories to measure "
                                                "(e.g. from `icl-lab train --preset markov-2l`)."),
    train: bool = typer.Option(False, "--train", help="Train (or reuse) the markov-2l runs of --seed into --out first."),
    seeds: list[int] = typer.Option([0], "--seed", help="With --train: a seed (repeat for several)."),
    out: Path = typer.Option(Path("runs/markov"), help="With --train: folder of the runs (OUT/kN-sSEED, each with its report.html)."),
    steps: Optional[int] = typer.Option(None, help="With --train: override the preset's steps."),
    json_out: bool = typer.Option(False, "--json", help="Print each run's stages and head scores as JSON on stdout, nothing else."),
) -> None:
    """In-context Markov chains (Edelman et al. 2024): the KL of the model to the uniform, unigram
    and bigram strategies at every checkpoint, the stages they name, and the statistical induction head."""
    from icl_lab.organisms.markov.lab import measure_markov, run_markov

    if not train and not runs:
        raise ConfigError("give run directories to measure, or --train to train markov-2l runs first")
    results = []
    with Bars() as bars:
        measured = lambda name, i, n: bars.train(f"{name} (measure)", i, n)  # noqa: E731
        for run in runs or []:
            results.append(measure_markov(run, log=bars.log, measure_progress=measured))
        for seed in seeds if train else []:
            results.append(run_markov(seed=seed, out=out, steps=steps, log=bars.log, train_progress=bars.train,
                                      measure_progress=measured))
    if json_out:
        print(json.dumps([record(r) for r in results], indent=2))
        return
    for r in results:
        s = r.summary
        table = Table(title=f"{r.run.path} (step {s['step']:,}, {r.seconds:.0f} s{', trained here' if r.trained else ''})", box=None)
        for col in ("stage", "steps"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for st in s["stages"]:
            table.add_row(st["stage"], f"{st['start']:,}–{st['end']:,}")
        console.print(table)
        kl, sih = s["final"]["kl"], s["sih"]
        console.print(f"final KL to uniform {kl['uniform']:.3f}, unigram {kl['unigram']:.3f}, bigram {kl['bigram']:.3f} nats; "
                      f"statistical induction head L{sih['layer']}H{sih['head']} {sih['score']:.2f} "
                      f"(uniform attention {sih['chance']:.2f}); report: [bold]{r.report}[/]")


def add_commands(app: typer.Typer) -> None:
    """Add `markov` to `app`."""
    app.command("markov")(markov_cmd)
