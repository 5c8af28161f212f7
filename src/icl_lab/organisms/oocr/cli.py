"""`icl-lab oocr TASK`: train, score, take apart and report one out-of-context reasoning task (or all)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from icl_lab.cli_bars import Bars

console = Console()


def oocr_cmd(
    task: str = typer.Argument(..., help="reversal, chain, chain-cot, chain-same, two-hop, or all."),
    out: Path = typer.Option(Path("runs/oocr"), help="Folder of the runs (OUT/TASK-sSEED, each with its report.html)."),
    seed: int = typer.Option(0, help="Run seed (initialisation and data order; the facts are fixed by the task)."),
    steps: Optional[int] = typer.Option(None, help="Override the preset's training steps."),
    weight_decay: Optional[float] = typer.Option(None, help="Override the preset's AdamW weight decay (grokking depends on it)."),
    phi: Optional[float] = typer.Option(None, help="two-hop: trained inferred facts per atomic fact (3.6-18; at most its 20 relations)."),
    json_out: bool = typer.Option(False, "--json", help="Print {task, splits, chance} per task as JSON on stdout, nothing else."),
    device: Optional[str] = typer.Option(None, help="Where to train and score: auto, cpu or cuda [default: the preset's "
                                         "train.device, scoring on cpu]; not part of the run."),
    dtype: Optional[str] = typer.Option(None, help="The scoring's precision, e.g. fp32 or bf16 [default: the model's]."),
) -> None:
    """Out-of-context reasoning: train the task's model (or reuse it), score every checkpoint on
    trained facts and each held-out split, take the final model apart (bridge lens, hop patching)
    and write its report."""
    from icl_lab.organisms.oocr.lab import TASKS, run_task

    tasks = list(TASKS) if task == "all" else [task]
    results = []
    with Bars() as bars:
        for name in tasks:
            results.append(run_task(name, out=out, seed=seed, steps=steps, weight_decay=weight_decay,
                                    phi=phi if task != "all" or name == "two-hop" else None, log=bars.log, train_progress=bars.train,
                                    device=device, dtype=dtype))
    records = [{"task": r.summary["task"], "seed": seed, "splits": r.summary["splits"], "chance": r.summary["chance"]} for r in results]
    if json_out:
        print(json.dumps(records if task == "all" else records[0], indent=2))
        return
    for r in results:
        s = r.summary
        table = Table(title=f"{s['task']}: {r.run.path} (step {s['step']:,}, {r.seconds:.0f} s)", box=None)
        for col in ("split", "accuracy", "answer loss"):
            table.add_column(col, justify="left" if col == "split" else "right")
        for split, acc in s["splits"].items():
            table.add_row(split, f"{acc:.1%}", f"{s['loss'][split]:.2f}")
        console.print(table)
        console.print(f"chance {s['chance']:.1%}; report: [bold]{r.report}[/]")


def add_commands(app: typer.Typer) -> None:
    """Add `oocr` to `app`."""
    app.command("oocr")(oocr_cmd)
