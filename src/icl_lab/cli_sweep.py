"""The `icl-lab sweep` command: parse a sweep file, run its trials on the chosen executor with a
progress bar, and print a table of the trials. Registered on the main app by `icl_lab.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from icl_lab.errors import ConfigError
from icl_lab.io import json_text

if TYPE_CHECKING:  # the sweep package is imported inside the command, as cli_experiments does
    from icl_lab.sweep import SweepResult

console = Console()
err_console = Console(stderr=True)


def sweep_cmd(
    sweep_file: Path = typer.Argument(..., help="A sweep YAML file (e.g. sweeps/layers.yaml)."),
    executor: str = typer.Option("local", help="local (a process pool), ray or slurm (submitit job arrays)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (e.g. 10.0.0.5:6379) [default: a local Ray on 127.0.0.1]."),
    dashboard: bool = typer.Option(False, "--dashboard", help="With a local Ray: start its dashboard (on 127.0.0.1)."),
    slurm_cluster: str = typer.Option("slurm", help="With --executor slurm: submitit's cluster, slurm or local "
                                      "(the same job path on this machine)."),
    device: Optional[str] = typer.Option(None, help="Where every trial trains and measures: auto, cpu or cuda "
                                         "[default: the preset's train.device, stages on cpu]; not part of the runs."),
    dtype: Optional[str] = typer.Option(None, help="Every trial's train.dtype: fp32 or bf16 (autocast) [default: the "
                                        "preset's]; part of the runs, as a grid field."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Trials at once (local workers, SLURM array parallelism, local Ray CPUs)."),
    threads: Optional[int] = typer.Option(None, help="Torch threads per trial [default: cores // jobs locally, 1 elsewhere]."),
    out: Optional[Path] = typer.Option(None, help="Folder of the runs and sweep.json [default: the file's out:, or runs/sweeps/NAME]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the trials and their run folders; train nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print sweep.json's content on stdout, nothing else."),
) -> None:
    """Train a family of runs (a preset x a grid of dotted overrides x seeds), then analyse, ablate
    or report each, on a local process pool, Ray or SLURM. Finished runs are reused and unfinished
    ones resumed, so rerunning a sweep only does what is missing. Writes OUT/sweep.json."""
    from icl_lab.engines import slurm_parameters
    from icl_lab.sweep import default_threads, expand, load_sweep, run_sweep

    _check_options(executor, address, dashboard, slurm_cluster, jobs, threads)
    spec = load_sweep(sweep_file)
    if executor == "slurm":  # the slurm: block as submitit will get it (an unknown key fails here)
        slurm_parameters(spec.slurm, jobs, threads or 1)
    out = out or Path(spec.out or Path("runs") / "sweeps" / sweep_file.stem)
    trials = expand(spec, out, where=sweep_file.name, device=device, dtype=dtype)
    if dry_run:
        _print_plan(trials, executor, jobs, threads or default_threads(executor, jobs), json_out)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=json_out) as bar:
        task = bar.add_task(f"sweep {sweep_file.stem} ({executor})", total=len(trials))
        failed = []

        def progress(res: dict, done: int, total: int) -> None:
            failed.extend([res["name"]] if res["status"] != "ok" else [])
            note = f", [red]{len(failed)} failed[/]" if failed else ""
            bar.update(task, completed=done, description=f"sweep {sweep_file.stem} ({executor}{note})")

        result = run_sweep(trials, out, executor=executor, n_jobs=jobs, threads=threads, address=address,
                           slurm=spec.slurm, slurm_cluster=slurm_cluster, progress=progress, dashboard=dashboard,
                           extra={"sweep": str(sweep_file), "preset": spec.preset, "then": list(spec.then),
                                  "device": device, "dtype": dtype})
    if json_out:
        print(json_text(result.to_json()))
    else:
        _print_table(result)
    if result.failed:
        raise typer.Exit(1)


def _check_options(executor: str, address: str | None, dashboard: bool, slurm_cluster: str, jobs: int,
                   threads: int | None) -> None:
    from icl_lab.sweep import EXECUTORS

    if executor not in EXECUTORS:
        raise ConfigError(f"unknown --executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if (address is not None or dashboard) and executor != "ray":
        raise ConfigError("--address and --dashboard are Ray's; add --executor ray or drop them")
    if address is not None and dashboard:
        raise ConfigError("--dashboard starts with a local Ray; a cluster at --address has its own (ray start --include-dashboard)")
    if slurm_cluster not in ("slurm", "local"):
        raise ConfigError(f"unknown --slurm-cluster {slurm_cluster!r}; choose slurm or local")
    if slurm_cluster != "slurm" and executor != "slurm":
        raise ConfigError("--slurm-cluster is submitit's; add --executor slurm or drop it")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"--jobs and --threads must be at least 1 (got {jobs}, {threads})")


def _print_plan(trials: list, executor: str, jobs: int, threads: int, json_out: bool) -> None:
    if json_out:
        print(json_text([{"name": t.name, "run": t.out, "stages": list(t.stages)} for t in trials]))
        return
    table = Table(title=f"{len(trials)} trials on {executor} ({jobs} at once, {threads} thread(s) each)", box=None)
    for col in ("trial", "run folder", "then"):
        table.add_column(col, no_wrap=col == "trial")
    for t in trials:
        table.add_row(t.name, t.out, ", ".join(t.stages) or "-")
    console.print(table)


def _fmt(value: object, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if spec else str(value)


def _print_table(result: SweepResult) -> None:
    table = Table(title=f"sweep: {len(result.trials)} trials in {result.seconds:.1f} s "
                        f"({result.executor}, {result.jobs} at once)", box=None)
    for col in ("trial", "status", "trained", "s", "final loss", "ICL score", "phase change", "induction heads"):
        table.add_column(col, justify="right" if col in ("s", "final loss", "ICL score") else "left", no_wrap=col == "trial")
    for t in result.trials:
        status = "[green]ok[/]" if t["status"] == "ok" else f"[red]{t['status']}[/]"
        heads = t.get("induction_heads")
        table.add_row(t["name"], status, _fmt(t.get("trained")), _fmt(t.get("seconds"), ".1f"),
                      _fmt(t.get("final_loss"), ".3f"), _fmt(t.get("icl_score"), "+.3f"), _fmt(t.get("phase_change")),
                      "-" if heads is None else (", ".join(heads) or "none"))
    console.print(table)
    for t in result.failed:
        console.print(f"[red]{t['name']} failed:[/] {t['error']}", highlight=False, soft_wrap=True)
    console.print(f"written: [bold]{result.out / 'sweep.json'}[/]")


def register_sweep(app: typer.Typer) -> None:
    """Add `sweep` to `app`."""
    app.command("sweep")(sweep_cmd)
