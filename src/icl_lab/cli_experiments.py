"""The `icl-lab reproduce`, `icl-lab oocr` and `icl-lab grok` commands: whole experiments that train, measure,
intervene and report in one go. Registered on the main app by `icl_lab.cli`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class _Bars:
    """A rich progress bar per training run, plus log lines printed above the bars."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=err_console, transient=True)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "_Bars":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def log(self, line: str) -> None:
        self.bar.console.print(f"[dim]{line}[/]", highlight=False)

    def train(self, name: str, step: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(f"train {name}", total=total)
        if step % 10 == 0 or step == total:
            self.bar.update(self.tasks[name], completed=step)


def reproduce_cmd(
    arguments: list[str] = typer.Argument(..., help="all, or some of argument-1 ... argument-6."),
    out: Optional[Path] = typer.Option(None, help="Folder of the runs; the report is OUT/report.html [default: runs/reproduce, "
                                       "or runs/reproduce-natural with --data natural]."),
    scale: str = typer.Option("default", help="default (2 CPU cores), tiny (a smoke test) or paper (a GPU)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Add SmolLM2-135M to Argument 6 [default: unless --scale tiny]."),
    json_out: bool = typer.Option(False, "--json", help="Print the verdicts as JSON on stdout, nothing else."),
    data: str = typer.Option("synthetic", help="synthetic (all six arguments) or natural (Arguments 1 and 3 on the natural-text presets)."),
    corpus: Optional[str] = typer.Option(None, help="With --data natural: another text to train on (a bundled name, a folder, hf:PATH)."),
) -> None:
    """Reproduce the six arguments of "In-context Learning and Induction Heads": train (or reuse)
    the models each needs, measure and intervene, and write one report with a verdict table each."""
    from icl_lab.reproduce import reproduce

    with _Bars() as bars:
        out = out or Path("runs/reproduce-natural" if data == "natural" else "runs/reproduce")
        result = reproduce(arguments, out=out, scale=scale, pretrained=pretrained, log=bars.log, train_progress=bars.train,
                           data=data, corpus=corpus)
    if json_out:
        print(json.dumps([c.to_json() for c in result.checks], indent=2))
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



def oocr_cmd(
    task: str = typer.Argument(..., help="reversal, chain, chain-cot, chain-same, two-hop, or all."),
    out: Path = typer.Option(Path("runs/oocr"), help="Folder of the runs (OUT/TASK-sSEED, each with its report.html)."),
    seed: int = typer.Option(0, help="Run seed (initialisation and data order; the facts are fixed by the task)."),
    steps: Optional[int] = typer.Option(None, help="Override the preset's training steps."),
    weight_decay: Optional[float] = typer.Option(None, help="Override the preset's AdamW weight decay (grokking depends on it)."),
    phi: Optional[float] = typer.Option(None, help="two-hop: trained inferred facts per atomic fact (3.6-18; at most its 20 relations)."),
    json_out: bool = typer.Option(False, "--json", help="Print {task, splits, chance} per task as JSON on stdout, nothing else."),
) -> None:
    """Out-of-context reasoning: train the task's model (or reuse it), score every checkpoint on
    trained facts and each held-out split, take the final model apart (bridge lens, hop patching)
    and write its report."""
    from icl_lab.oocr import TASKS, run_task

    tasks = list(TASKS) if task == "all" else [task]
    results = []
    with _Bars() as bars:
        for name in tasks:
            results.append(run_task(name, out=out, seed=seed, steps=steps, weight_decay=weight_decay, phi=phi if task != "all" or name == "two-hop" else None,
                                    log=bars.log, train_progress=bars.train))
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


def grok_cmd(
    p: int = typer.Option(113, "--p", help="The modulus (odd; a prime such as 113)."),
    frac: float = typer.Option(0.3, help="Share of the p² pairs trained on; the rest is held out."),
    seed: int = typer.Option(0, help="Run seed: the initialisation and the split."),
    out: Path = typer.Option(Path("runs/grokking"), help="Folder of the runs (OUT/pP-fFRAC-wdWD-sSEED, each with its report.html)."),
    steps: Optional[int] = typer.Option(None, help="Override the preset's full-batch steps."),
    weight_decay: Optional[float] = typer.Option(None, help="Override the preset's weight decay (1.0); 0 is the no-grokking control."),
    lr: Optional[float] = typer.Option(None, help="Override the preset's learning rate (1e-3)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Measure and report this existing modular-addition run instead (e.g. from `icl-lab train --preset grokking-1l`)."),
    json_out: bool = typer.Option(False, "--json", help="Print the phases and key frequencies as JSON on stdout, nothing else."),
) -> None:
    """Grokking modular addition: train the `grokking-1l` model on (a + b) mod p (or reuse the run),
    measure Nanda et al.'s progress measures at every checkpoint, find the memorisation,
    circuit-formation and cleanup phases, and write the run's report page."""
    from icl_lab.grokking import measure_grokking, run_grokking

    with _Bars() as bars:
        measured = lambda name, i, n: bars.train(f"{name} (measure)", i, n)  # noqa: E731
        if run is not None:
            r = measure_grokking(run, log=bars.log, measure_progress=measured)
        else:
            r = run_grokking(p=p, frac=frac, seed=seed, out=out, steps=steps, weight_decay=weight_decay, lr=lr, log=bars.log,
                             train_progress=bars.train, measure_progress=measured)
    s = r.summary
    ph = {k: v for k, v in s["phases"].items() if k != "rule"}
    if json_out:
        print(json.dumps({"run": str(r.run.path), "grokked": s["grokked"], "test_accuracy": s["final"]["test_accuracy"],
                          "key_freqs": s["key_freqs"], "phases": ph}, indent=2))
        return
    table = Table(title=f"{r.run.path} (step {s['step']:,}, {r.seconds:.0f} s{', trained here' if r.trained else ''})", box=None)
    for col in ("", "steps", ""):
        table.add_column(col, justify="right" if col == "steps" else "left")
    for name in ("memorisation", "circuit_formation", "cleanup"):
        w = ph[name]
        table.add_row(name.replace("_", " "), f"{w['start']:,}–{w['end']:,}" if w else "not found", "")
    for name in ("test_loss_drop", "restricted_loss_drop"):
        d = ph[name]
        where = " → ".join(dict.fromkeys((d["phase_start"] or "-", d["phase_end"] or "after"))).replace("_", " ") if d else ""
        table.add_row(name.replace("_", " "), f"{d['start']:,}–{d['end']:,}" if d else "none", f"in {where}" if d else "")
    console.print(table)
    f = s["final"]
    console.print(f"{'[green]groks[/]' if s['grokked'] else '[red]does not grok[/]'}: test accuracy {f['test_accuracy']:.1%}, "
                  f"train {f['train_accuracy']:.1%}; key frequencies {', '.join(map(str, s['key_freqs'])) or 'none'}; "
                  f"restricted loss falls before the test loss: {'yes' if ph['restricted_before_test'] else 'no'}")
    console.print(f"report: [bold]{r.report}[/]")


def register_experiments(app: typer.Typer) -> None:
    """Add `reproduce`, `oocr` and `grok` to `app`."""
    app.command("reproduce")(reproduce_cmd)
    app.command("oocr")(oocr_cmd)
    app.command("grok")(grok_cmd)
