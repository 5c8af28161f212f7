"""`run_task`: one out-of-context reasoning task, end to end, reusing whatever is already done."""

from __future__ import annotations

import json
import time
from pathlib import Path

from icl_lab.errors import ConfigError
from icl_lab.organisms.oocr.circuits import analyze_circuits
from icl_lab.io import write_json
from icl_lab.organisms.oocr.pipeline import evaluate_run, is_evaluated, task_of
from icl_lab.organisms.oocr.results import summary_path
from icl_lab.run.lab import LabResult, Log, TrainProgress
from icl_lab.run.rundir import load_run
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.presets import get_preset
from icl_lab.train.trainer import ensure_trained

TASKS = ("reversal", "chain", "chain-cot", "chain-same", "two-hop")



OOCRResult = LabResult  # the shared shape (icl_lab.run.lab)


def task_experiment(task: str, seed: int = 0, steps: int | None = None, weight_decay: float | None = None,
                    phi: float | None = None) -> ExperimentConfig:
    """The default experiment of `task` (its `oocr-TASK` preset), with optional overrides
    (`phi`: two-hop's inferred-to-atomic ratio).

    Raises:
        ConfigError: an unknown task.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} or all")
    cfg = get_preset(f"oocr-{task}").replace(seed=seed)
    over = {k: v for k, v in (("steps", steps), ("weight_decay", weight_decay)) if v is not None}
    cfg = cfg.replace(train=over) if over else cfg
    if phi is not None:
        if task != "two-hop":
            raise ConfigError(f"phi is the two-hop task's ratio of inferred to atomic facts; {task} has none")
        cfg = cfg.replace(data={"oocr": {"phi": phi}})
    return cfg


def run_task(task: str, out: str | Path = "runs/oocr", seed: int = 0, steps: int | None = None,
             weight_decay: float | None = None, phi: float | None = None, log: Log | None = None,
             train_progress: TrainProgress | None = None, device: str | None = None, dtype: str | None = None) -> OOCRResult:
    """Train (or reuse) `task`'s model in `out/TASK-sSEED` (`TASK-phiPHI-sSEED` with `phi`), score every checkpoint, analyse the
    final model and write the run's report.

    Args:
        task: reversal, chain, chain-cot, chain-same or two-hop.
        out: folder of the runs.
        seed: the run seed (initialisation and data order; the facts are fixed by the task).
        steps, weight_decay, phi: override the preset's (see `task_experiment`).
        log: called with a line for each thing done.
        train_progress: called with (run name, step, total) while training.
        device: where to train and score ("auto", "cpu", "cuda"; not part of the run's identity).
        dtype: the scoring's precision ("fp32", "bf16", ...); training keeps the preset's.

    Raises:
        ConfigError: an unknown task, or the run folder holds another experiment.
    """
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    cfg = task_experiment(task, seed, steps, weight_decay, phi)
    cfg = cfg.replace(train={"device": device}) if device else cfg
    path = Path(out) / (f"{task}-phi{phi:g}-s{seed}" if phi is not None else f"{task}-s{seed}")  # a phi sweep side by side
    progress = (lambda step, total, rec: train_progress(path.name, step, total)) if train_progress else None
    ensure_trained(cfg, path, progress, announce=lambda: log(f"training {path.name} ({cfg.train.steps} steps)"))
    run = load_run(path)
    summary = json.loads(summary_path(run).read_text()) if is_evaluated(run) else {}
    if "circuits" not in summary:
        log(f"scoring every checkpoint of {path.name}")
        summary = evaluate_run(run, device=None if device == "auto" else device, dtype=dtype)
        log(f"taking {path.name} apart: bridge lens and hop patching")
        summary["circuits"] = analyze_circuits(run.model(), task_of(run))
        summary["seed"] = seed
        write_json(summary_path(run), summary)
    log(f"writing the report of {path.name}")
    from icl_lab.report.build import write_report  # plotly loads only when a report is written

    report = write_report([path]).path
    return OOCRResult(run, summary, report, time.perf_counter() - t0)
