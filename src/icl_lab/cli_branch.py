"""`icl-lab branch` and `icl-lab compare`: counterfactual training (issue #30). A branch continues a
run from one of its checkpoints with an intervention held during training; compare overlays the
trajectories. Registered on the main app by `icl_lab.cli`; each command is one library call."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


def branch_cmd(
    run_dir: Path = typer.Argument(..., help="The run to branch from."),
    from_step: int = typer.Option(..., "--from", help="A step the run has a checkpoint at (0: its start)."),
    intervene: Optional[str] = typer.Option(None, help="ablate:L1H0[=mean], freeze:L0H1, clamp-pattern:L0H1=previous-token|"
                                            "uniform|bos, mask-loss:repeats or smear-keys:on [default: none]."),
    until: Optional[int] = typer.Option(None, help="Release the intervention at this step [default: hold it to the end]."),
    steps: Optional[int] = typer.Option(None, help="Train the branch to this step [default: the parent's steps]."),
    out: Path = typer.Option(..., help="The branch's run directory."),
    resume: bool = typer.Option(False, help="Continue an interrupted branch in --out."),
    device: Optional[str] = typer.Option(None, help="Where the branch trains: auto, cpu or cuda [default: auto]; not part of the run."),
    dtype: Optional[str] = typer.Option(None, help="The branch's train.dtype: fp32 or bf16 [default: the parent's]."),
) -> None:
    """Train a branch: the run continued from its checkpoint at --from (weights, optimiser state and
    data position, so it sees exactly the parent's batches), with an intervention held from there
    until --until. meta.json records the parent, fork step and intervention; `icl-lab info` shows them."""
    from icl_lab.train.branch import branch

    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task(f"branch {out.name}", total=None)

        def progress(step: int, total: int, rec) -> None:
            bar.update(task, completed=step, total=total)

        train = {k: v for k, v in (("steps", steps), ("device", device), ("dtype", dtype)) if v is not None}
        path = branch(run_dir, from_step, out, intervene, until, changes={"train": train} if train else None,
                      progress=progress, resume=resume)
    console.print(f"branch of {run_dir} from step {from_step} ({intervene or 'no intervention'}"
                  f"{f' until {until}' if until else ''}) in [bold]{path}[/]; next: `icl-lab analyze {path}`, "
                  f"then `icl-lab compare {run_dir} {path}`")


def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Two or more analysed runs, e.g. a run and its branches."),
    out: Optional[Path] = typer.Option(None, help="HTML file [default: FIRST_RUN/compare.html]."),
) -> None:
    """Overlay the runs' loss, ICL score, prefix-matching and previous-token curves (forks and
    releases marked, phase windows shaded) with a table of the windows' shifts; offline HTML that
    reads the stored analyses only."""
    from icl_lab.report.compare import shift_rows, write_compare

    path = write_compare(runs, out)
    console.print(f"compare: [bold]{path}[/]")
    for row in shift_rows([__import__("icl_lab").run.open_run_files(r) for r in runs]):
        start = "no phase change" if row["start"] != row["start"] else f"window from {row['start']:,.0f} tokens"
        shift = "" if row["shift"] != row["shift"] else f", shifted {row['shift']:+,.0f}"
        console.print(f"  {row['run']}: {start}{shift}", highlight=False)


def register_branch(app: typer.Typer) -> None:
    app.command("branch")(branch_cmd)
    app.command("compare")(compare_cmd)
