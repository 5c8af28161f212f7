"""The `icl-lab reproduce` command: the paper's arguments as whole experiments that train, measure,
intervene and report in one go (each organism's own commands live in its package). Registered on the main app by `icl_lab.cli`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from icl_lab.cli_bars import Bars
from icl_lab.io import json_text

console = Console()
err_console = Console(stderr=True)


def reproduce_cmd(
    arguments: list[str] = typer.Argument(..., help="all, or some of argument-1 ... argument-6."),
    out: Optional[Path] = typer.Option(None, help="Folder of the runs; the report is OUT/report.html [default: runs/reproduce, "
                                       "or runs/reproduce-natural with --data natural]."),
    scale: str = typer.Option("default", help="default (2 CPU cores), tiny (a smoke test) or paper (a GPU)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="Add SmolLM2-135M to Argument 6 [default: unless --scale tiny]."),
    json_out: bool = typer.Option(False, "--json", help="Print the verdicts as JSON on stdout, nothing else."),
    data: str = typer.Option("synthetic", help="synthetic (all six arguments) or natural (Arguments 1 and 3 on the natural-text presets)."),
    corpus: Optional[str] = typer.Option(None, help="With --data natural: another text to train on (a bundled name, a folder, hf:PATH)."),
    device: Optional[str] = typer.Option(None, help="Where the runs train and are analysed: auto, cpu or cuda [default: the "
                                         "presets' train.device, analyses on cpu]; not part of the runs."),
    dtype: Optional[str] = typer.Option(None, help="The analyses' precision, e.g. fp32 or bf16 [default: the model's]."),
) -> None:
    """Reproduce the six arguments of "In-context Learning and Induction Heads": train (or reuse)
    the models each needs, measure and intervene, and write one report with a verdict table each."""
    from icl_lab.reproduce import reproduce

    with Bars() as bars:
        out = out or Path("runs/reproduce-natural" if data == "natural" else "runs/reproduce")
        result = reproduce(arguments, out=out, scale=scale, pretrained=pretrained, log=bars.log, train_progress=bars.train,
                           data=data, corpus=corpus, device=device, dtype=dtype)
    if json_out:
        print(json_text([c.to_json() for c in result.checks]))
        return
    table = Table(box=None)
    for col in ("argument", "metric", "value", "threshold", ""):
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for c in result.checks:
        table.add_row(c.argument.removeprefix("argument-"), c.metric, "n/a" if math.isnan(c.value) else f"{c.value:.3g}",
                      c.threshold, "[green]pass[/]" if c.passed else "[red]fail[/]")
    console.print(table)
    console.print(f"{sum(c.passed for c in result.checks)}/{len(result.checks)} checks pass in {result.seconds / 60:.1f} min; "
                  f"report: [bold]{result.report}[/], verdicts: {result.verdicts_json}")



def register_experiments(app: typer.Typer) -> None:
    """Add `reproduce` to `app`."""
    app.command("reproduce")(reproduce_cmd)
