"""`run_grokking`: one grokking run, end to end, reusing whatever is already done."""

from __future__ import annotations

import time
from pathlib import Path

from icl_lab.organisms.grokking.task import train_size
from icl_lab.organisms.grokking.pipeline import evaluate_run, is_evaluated
from icl_lab.organisms.grokking.results import grokking_summary
from icl_lab.run.lab import LabResult, Log, TrainProgress
from icl_lab.run.rundir import load_run
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.presets import get_preset
from icl_lab.train.trainer import ensure_trained



GrokkingResult = LabResult  # the shared shape (icl_lab.run.lab)


def grok_experiment(p: int = 113, frac: float = 0.3, seed: int = 0, steps: int | None = None,
                    weight_decay: float | None = None, lr: float | None = None) -> ExperimentConfig:
    """The `grokking-1l` preset for modulus `p` and training share `frac`, full batch, with the run
    seed also drawing the split (so seeds differ in initialisation and split alike).

    Raises:
        ConfigError: an invalid p, frac or override.
    """
    modular = {"p": p, "frac": frac, "split_seed": seed}
    cfg = get_preset("grokking-1l").replace(seed=seed, model={"d_vocab": p + 1}, data={"modular": modular})
    over = {k: v for k, v in (("steps", steps), ("weight_decay", weight_decay), ("lr", lr)) if v is not None}
    return cfg.replace(train={"batch_size": train_size(cfg.data.modular), **over})


def run_name(cfg: ExperimentConfig) -> str:
    """p113-f0.3-wd1-s0: what differs between the runs of one folder."""
    m, t = cfg.data.modular, cfg.train
    extra = "" if t.lr == get_preset("grokking-1l").train.lr else f"-lr{t.lr:g}"
    return f"p{m.p}-f{m.frac:g}-wd{t.weight_decay:g}{extra}-s{cfg.seed}"


def run_grokking(p: int = 113, frac: float = 0.3, seed: int = 0, out: str | Path = "runs/grokking", steps: int | None = None,
                 weight_decay: float | None = None, lr: float | None = None, log: Log | None = None,
                 train_progress: TrainProgress | None = None, measure_progress: TrainProgress | None = None,
                 device: str | None = None, dtype: str | None = None) -> GrokkingResult:
    """Train (or reuse) the run in `out/p{P}-f{FRAC}-wd{WD}-s{SEED}`, measure every checkpoint, find
    the phases, analyse the final model and write the run's report page.

    Args:
        p, frac, seed: the modulus, the training share and the seed (initialisation and split).
        out: folder of the runs.
        steps, weight_decay, lr: override the preset's (weight_decay=0 is the no-grokking control).
        log: called with a line for each thing done.
        train_progress, measure_progress: called with (run name, done, total).
        device: where to train and measure ("auto", "cpu", "cuda"; not part of the run's identity).
        dtype: the measurements' precision ("fp32", "bf16", ...); training keeps the preset's.

    Raises:
        ConfigError: invalid settings, or the run folder holds another experiment.
    """
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    cfg = grok_experiment(p, frac, seed, steps, weight_decay, lr)
    cfg = cfg.replace(train={"device": device}) if device else cfg
    path = Path(out) / run_name(cfg)
    progress = (lambda step, total, rec: train_progress(path.name, step, total)) if train_progress else None
    _, trained = ensure_trained(cfg, path, progress, announce=lambda: log(f"training {path.name} ({cfg.train.steps:,} full-batch steps)"))
    result = measure_grokking(path, log, measure_progress, device, dtype)
    return GrokkingResult(result.run, result.summary, result.report, time.perf_counter() - t0, trained)


def measure_grokking(path: str | Path, log: Log | None = None, measure_progress: TrainProgress | None = None,
                     device: str | None = None, dtype: str | None = None) -> GrokkingResult:
    """Measure an existing modular-addition run (e.g. one `icl-lab train --preset grokking-1l` wrote)
    unless it is already measured since its last checkpoint, and write its report page.

    Raises:
        CheckpointError: `path` is not a run directory.
        ConfigError: the run is not a modular-addition run.
    """
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    run = load_run(path)
    if is_evaluated(run):
        summary = grokking_summary(run)
    else:
        log(f"measuring every checkpoint of {run.path.name}")
        summary = evaluate_run(run, measure_progress, device=_measure_device(device), dtype=dtype)
    log(f"writing the report of {run.path.name}")
    from icl_lab.organisms.grokking.page import write_grokking_report  # plotly loads only when a page is written

    report = write_grokking_report(run)
    return GrokkingResult(run, summary, report, time.perf_counter() - t0, False)


def _measure_device(device: str | None) -> str:
    """Where measurements run: "auto" picks CUDA when there is one, as training does."""
    if device in (None, "auto"):
        import torch

        return "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    return device
