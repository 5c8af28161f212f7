"""`run_markov`: one in-context Markov-chain run, end to end (train or reuse, measure every
checkpoint, write the report), and `measure_markov` for a run that is already trained."""

from __future__ import annotations

import time
from pathlib import Path

from icl_lab.organisms.markov.pipeline import evaluate_run, is_evaluated
from icl_lab.organisms.markov.results import read_summary
from icl_lab.run.lab import LabResult, Log, TrainProgress
from icl_lab.run.rundir import load_run
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.presets import get_preset
from icl_lab.train.trainer import ensure_trained



MarkovResult = LabResult  # the shared shape (icl_lab.run.lab)


def markov_experiment(seed: int = 0, steps: int | None = None, n_states: int | None = None) -> ExperimentConfig:
    """The `markov-2l` preset with a seed and optional overrides (`n_states` also sizes the vocabulary).

    Raises:
        ConfigError: an invalid override.
    """
    cfg = get_preset("markov-2l").replace(seed=seed)
    if steps is not None:
        cfg = cfg.replace(train={"steps": steps, "warmup_steps": min(cfg.train.warmup_steps, steps)})
    if n_states is not None:
        cfg = cfg.replace(model={"d_vocab": n_states}, data={"markov": {"n_states": n_states}})
    return cfg


def run_markov(seed: int = 0, out: str | Path = "runs/markov", steps: int | None = None, n_states: int | None = None,
               log: Log | None = None, train_progress: TrainProgress | None = None,
               measure_progress: TrainProgress | None = None) -> MarkovResult:
    """Train (or reuse) `out/k{N_STATES}-s{SEED}`, measure every checkpoint and write its report.

    Raises:
        ConfigError: invalid settings, or the run folder holds another experiment.
    """
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    cfg = markov_experiment(seed, steps, n_states)
    path = Path(out) / f"k{cfg.data.markov.n_states}-s{seed}"
    progress = (lambda step, total, rec: train_progress(path.name, step, total)) if train_progress else None
    _, trained = ensure_trained(cfg, path, progress, announce=lambda: log(f"training {path.name} ({cfg.train.steps:,} steps)"))
    result = measure_markov(path, log, measure_progress)
    return MarkovResult(result.run, result.summary, result.report, time.perf_counter() - t0, trained)


def measure_markov(path: str | Path, log: Log | None = None, measure_progress: TrainProgress | None = None) -> MarkovResult:
    """Measure an existing Markov-chain run (e.g. from `icl-lab train --preset markov-2l`) unless it
    is already measured since its last checkpoint, and write its report.

    Raises:
        CheckpointError: `path` is not a run directory.
        ConfigError: the run is not a Markov-chain run.
    """
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    run = load_run(path)
    summary = read_summary(run) if is_evaluated(run) else None
    if summary is None:
        log(f"measuring every checkpoint of {run.path.name}")
        summary = evaluate_run(run, measure_progress)
    log(f"writing the report of {run.path.name}")
    from icl_lab.report.build import write_report  # plotly loads only when a report is written

    report = write_report([run.path]).path
    return MarkovResult(run, summary, report, time.perf_counter() - t0, False)
