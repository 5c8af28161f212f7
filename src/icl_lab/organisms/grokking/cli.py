"""`icl-lab grok`: train (or reuse), measure and report one grokking run of modular addition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from icl_lab.cli_bars import Bars

console = Console()


def grok_cmd(
    p: int = typer.Option(113, "--p", help="The modulus (odd; a prime such as 113)."),
    frac: float = typer.Option(0.3, help="Share of the p² pairs trained on; the rest is held out."),
    seed: int = typer.Option(0, help="Run seed: the initialisation and the split."),
    out: Path = typer.Option(Path("runs/grokking"), help="Folder of the runs (OUT/pP-fFRAC-wdWD-sSEED, each with its report.html)."),
    steps: Optional[int] = typer.Option(None, help="Override the preset's full-batch steps."),
    weight_decay: Optional[float] = typer.Option(None, help="Override the preset's weight decay (1.0); 0 is the no-grokking control."),
    lr: Optional[float] = typer.Option(None, help="Override the preset's learning rate (1e-3)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Measure and report this existing modular-addition run instead "
                                       "(e.g. from `icl-lab train --preset grokking-1l`)."),
    json_out: bool = typer.Option(False, "--json", help="Print the phases and key frequencies as JSON on stdout, nothing else."),
    device: Optional[str] = typer.Option(None, help="Where to train and measure: auto, cpu or cuda [default: the preset's "
                                         "train.device, measuring on cpu]; not part of the run."),
    dtype: Optional[str] = typer.Option(None, help="The measurements' precision, e.g. fp32 or bf16 [default: the model's]."),
) -> None:
    """Grokking modular addition: train the `grokking-1l` model on (a + b) mod p (or reuse the run),
    measure Nanda et al.'s progress measures at every checkpoint, find the memorisation,
    circuit-formation and cleanup phases, and write the run's report page."""
    from icl_lab.organisms.grokking.lab import measure_grokking, run_grokking

    with Bars() as bars:
        measured = lambda name, i, n: bars.train(f"{name} (measure)", i, n)  # noqa: E731
        if run is not None:
            r = measure_grokking(run, log=bars.log, measure_progress=measured, device=device, dtype=dtype)
        else:
            r = run_grokking(p=p, frac=frac, seed=seed, out=out, steps=steps, weight_decay=weight_decay, lr=lr, log=bars.log,
                             train_progress=bars.train, measure_progress=measured, device=device, dtype=dtype)
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


def add_commands(app: typer.Typer) -> None:
    """Add `grok` to `app`."""
    app.command("grok")(grok_cmd)
