"""The `icl-lab llc` command: the local learning coefficient at a run's checkpoints (devinterp's
SGLD), its calibration, its stages against the phase window and the score rises. A thin shell over
`icl_lab.pipeline.llc` (which chooses the settings, reads calibrations and decides what `--reuse` keeps);
registered on the main app by `icl_lab.cli`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from icl_lab.errors import ConfigError
from icl_lab.io import json_text

console = Console()
err_console = Console(stderr=True)


def llc_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run directories."),
    heads: bool = typer.Option(False, "--heads", help="Also every head's refined LLC (one more set of chains per head)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Choose lr, gamma and nbeta by the diagnostic grid on the "
                                   "first run, and use them for every run given."),
    calibration_file: Optional[Path] = typer.Option(None, "--calibration", help="Use the settings another run's calibration "
                                                    "chose (its analysis/llc_calibration.json) [default: this run's own, if any]."),
    lr: Optional[float] = typer.Option(None, help="SGLD step size epsilon [default: the run's calibration, else 1e-4]."),
    gamma: Optional[float] = typer.Option(None, help="Localisation strength [default: the run's calibration, else 1000]."),
    nbeta: Optional[float] = typer.Option(None, help="Inverse temperature n*beta [default: the calibration, else n/log n "
                                          "of a batch's tokens]."),
    chains: int = typer.Option(4, help="SGLD chains per estimate."),
    draws: int = typer.Option(200, help="Draws per chain."),
    burnin: Optional[int] = typer.Option(None, help="Steps dropped at the start of each chain [default: the calibration's, "
                                         "else 0]."),
    batch_size: int = typer.Option(32, help="Sequences per SGLD step."),
    seed: int = typer.Option(0, help="Seed of the chains (chain k uses seed + k)."),
    checkpoints: Optional[int] = typer.Option(None, help="Measure this many checkpoints, spread over log-steps [default: all]."),
    executor: str = typer.Option("local", help="Where checkpoints run: local (a process pool, one task per core), ray, "
                                 "slurm, or serial (this process)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Checkpoints at once [default: this machine's cores]."),
    threads: int = typer.Option(1, help="Torch threads per checkpoint task with --executor."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address with --executor ray [default: a local Ray]."),
    device: str = typer.Option("cpu", help="Where the chains run: cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("fp32", help="Chain dtype: fp32, bf16, fp16 or fp64 (SGLD's small steps want fp32)."),
    reuse: bool = typer.Option(False, help="Skip a run whose llc.json is newer than its last checkpoint and has these settings."),
    json_out: bool = typer.Option(False, "--json", help="Print the summaries as JSON on stdout, nothing else."),
) -> None:
    """Estimate the local learning coefficient at every checkpoint (or --checkpoints N of them) with
    devinterp's SGLD, checkpoints fanned out over a local process pool by default, flag unhealthy
    estimates, find the LLC's stages and set them beside the phase window and the previous-token
    and prefix-matching rises. Writes RUN/analysis/llc.json and llc rows in the run's metrics
    table; --calibrate also writes llc_calibration.json."""
    import icl_lab
    from icl_lab.engines import ENGINES
    from icl_lab.measure.llc import SGLDSettings
    from icl_lab.pipeline.llc import calibrate_run, llc_run, llc_settings, read_calibration, reusable_llc

    if executor not in ("serial", *ENGINES):
        raise ConfigError(f"unknown --executor {executor!r}; choose serial, {', '.join(ENGINES)}")
    jobs = jobs or os.cpu_count() or 1
    if calibrate and any(v is not None for v in (lr, gamma, nbeta)):
        raise ConfigError("--calibrate chooses --lr, --gamma and --nbeta; drop them or drop --calibrate")
    if calibrate and calibration_file is not None:
        raise ConfigError("--calibrate and --calibration both choose the settings; keep one")
    loaded = [icl_lab.load_run(r) for r in runs]
    base = SGLDSettings.parse({"chains": chains, "draws": draws, "burnin": burnin or 0, "batch_size": batch_size, "seed": seed},
                              "SGLD settings")
    explicit = {k: v for k, v in {"lr": lr, "gamma": gamma, "nbeta": nbeta, "burnin": burnin}.items() if v is not None}
    calibration = read_calibration(calibration_file) if calibration_file is not None else None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeRemainingColumn())
    if calibrate:
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(f"calibrate on {loaded[0].path.name}", total=None)
            cal = calibrate_run(loaded[0], base, progress=lambda _, done, total: bar.update(task, completed=done, total=total),
                                device=device, dtype=dtype)
        calibration = {**cal.to_json(), "run": str(loaded[0].path)}
        _print_calibration(cal, json_out)
    summaries = {}
    with Progress(*columns, console=err_console, transient=json_out) as bar:
        for run in loaded:
            settings, cal = llc_settings(run, base, calibration, explicit)
            old = reusable_llc(run, settings, heads, checkpoints) if reuse else None
            if old is not None:
                summaries[str(run.path)] = old
                continue
            task = bar.add_task(f"llc {run.path.name}", total=None)
            summaries[str(run.path)] = llc_run(run, settings, heads, checkpoints, None if executor == "serial" else executor,
                                               jobs, threads, address, calibration=cal,
                                               progress=lambda _, done, total: bar.update(task, completed=done, total=total),
                                               device=device, dtype=dtype)
    _print_summaries(summaries, json_out)


def _print_calibration(cal, json_out: bool) -> None:
    if json_out:
        return
    table = Table(title="SGLD calibration (2 chains per point; docs/llc.md)", box=None)
    for col in ("nbeta", "gamma", "lr", *(f"step {s}" for s in cal.steps)):
        table.add_column(col, justify="right")
    points: dict[tuple, list[dict]] = {}
    for r in cal.rows:
        points.setdefault((r["nbeta"], r["gamma"], r["lr"]), []).append(r)
    for (nb, g, lr), rs in points.items():
        table.add_row(f"{nb:.0f}", f"{g:g}", f"{lr:g}", *(f"{r['llc']:.1f}" + ("" if r["ok"] else " [red]x[/]") for r in rs))
    console.print(table)
    c = cal.chosen
    state = "healthy at every calibration step" if cal.healthy else "[red]no point was healthy everywhere: the least bad[/]"
    console.print(f"chosen: lr {c.lr:g}, gamma {c.gamma:g}, nbeta {c.nbeta or 'n/log n'} ({state})")


def _print_summaries(summaries: dict[str, dict], json_out: bool) -> None:
    if json_out:
        print(json_text(list(summaries.values()) if len(summaries) > 1 else next(iter(summaries.values()))))
        return
    for path, s in summaries.items():
        pairs = [(step, v) for step, v in zip(s["steps"], s["llc"]) if v is not None]  # None: a diverged estimate
        (s0, first), (s1, last) = pairs[0], pairs[-1]
        peak_step, peak = max(pairs, key=lambda p: p[1])
        console.print(f"[bold]{path}[/]: LLC {first:.1f} (step {s0}) -> peak {peak:.1f} (step {peak_step}) "
                      f"-> {last:.1f} (step {s1}); {sum(s['healthy'])}/{len(s['llc'])} estimates healthy")
        st = s["stages"]
        for stage in st["stages"]:
            console.print(f"  stage {stage['start_tokens']:>12,.0f} - {stage['end_tokens']:>12,.0f} tokens: {stage['direction']:<8}"
                          f" LLC {stage['llc_start']:.1f} -> {stage['llc_end']:.1f}")
        for label, key in (("previous-token rise", "llc_in_previous_token_rise"),
                           ("prefix-matching rise", "llc_in_prefix_matching_rise")):
            d, w = st.get(key), st.get(key.replace("llc_in_", "").replace("_rise", "_window"))
            if d and w:
                console.print(f"  {label} {w['start_tokens']:,.0f}-{w['end_tokens']:,.0f} tokens: LLC {d['direction']} "
                              f"({d['llc_start']:.1f} -> {d['llc_end']:.1f})")
        if st.get("two_part_bump") is not None:
            console.print(f"  previous-token stage first: {st['previous_token_first']}; two-part bump (LLC falls, then rises): "
                          f"{st['two_part_bump']}")
        for w in s["warnings"]:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)


def register_llc(app: typer.Typer) -> None:
    app.command("llc")(llc_cmd)
