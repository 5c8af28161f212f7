"""`icl-lab report` and `icl-lab serve`: the HTML pages over what `analyze`, `ablate` and `llc`
stored (`icl_lab.report`, which runs no model). Registered on the main app by `icl_lab.cli`; each
command is one library call."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


def report_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run directories (analysed runs get every section)."),
    out: Optional[Path] = typer.Option(None, help="HTML file [default: RUN/report.html, or the runs' common folder]."),
) -> None:
    """Write one self-contained HTML report (plots, Model Analysis Table, attention viewer,
    composition graph, verdict) that opens offline, and print its path and the verdict. It reads
    what `analyze` and `ablate` stored and runs no model; a gap names the command that fills it."""
    from icl_lab.report import write_report

    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("report", total=len(runs) + 1)
        report = write_report(runs, out=out,
                              progress=lambda what, done, total: bar.update(task, completed=done))
    console.print(f"report: [bold]{report.path}[/]")
    for line in report.verdict:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def serve_cmd(
    runs_dir: Path = typer.Argument(Path("runs"), help="Folder holding run directories."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the default is reachable from this machine only."),
    port: int = typer.Option(8000, help="Port (0: any free port)."),
    allow_remote: bool = typer.Option(False, help="Allow a --host other machines can reach (there is no authentication)."),
) -> None:
    """Serve a local page that lists the runs in RUNS_DIR and opens their reports, refreshing
    while a run trains. Paths outside RUNS_DIR are refused."""
    from icl_lab.report import make_server

    server = make_server(runs_dir, host=host, port=port, allow_remote=allow_remote)
    if allow_remote:
        err_console.print(f"warning: serving {runs_dir} to every machine that can reach {host}:{server.server_address[1]}, "
                          "with no authentication")
    bound_host, bound_port = server.server_address[:2]
    console.print(f"serving {runs_dir} at [bold]http://{bound_host}:{bound_port}/[/] (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register_report(app: typer.Typer) -> None:
    """Add `report` and `serve` to `app`."""
    app.command("report")(report_cmd)
    app.command("serve")(serve_cmd)
