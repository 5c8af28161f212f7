"""One sweep trial, the function every executor runs: train the job's run (reusing a complete one,
resuming an unfinished one), run its stages with reuse, and return a small JSON-able result. It
writes only inside its own run directory, so a failed trial costs no other trial anything."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from icl_lab.errors import IclLabError
from icl_lab.pipeline import ablate_run, analyze
from icl_lab.pipeline.ablation import is_ablated
from icl_lab.pipeline.analyze import is_analysed
from icl_lab.report import write_report
from icl_lab.run import Run, load_run
from icl_lab.sweep.spec import Job
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.trainer import ensure_trained


def run_job(job: Job, threads: int = 1) -> dict:
    """Train `job` and run its stages; never raises, so one bad trial never stops a sweep.

    Args:
        job: the trial (from `expand`).
        threads: torch intra-op threads for this trial. Training is bit-identical for the same
            config and thread count, whichever executor runs it.

    Returns:
        {name, run, status ("ok" or "failed"), error, trained, seconds, final_loss, icl_score,
        phase_change, induction_heads}; the analysis fields are None unless a stage measured them.
    """
    torch.set_num_threads(max(1, threads))
    start = time.perf_counter()
    result = {"name": job.name, "run": job.out, "point": job.point, "seed": job.seed, "status": "ok", "error": None,
              "trained": False, "seconds": 0.0, "final_loss": None, "icl_score": None, "phase_change": None,
              "phase_change_tokens": None, "induction_heads": None}
    try:
        cfg = ExperimentConfig.parse(job.config, where=f"job {job.name}")
        if job.device is not None:  # where it runs, not which run it is: config.json keeps "auto"
            cfg = cfg.replace(train={"device": job.device})
        _, result["trained"] = ensure_trained(cfg, job.out)
        run = load_run(job.out)
        _run_stages(run, job.stages, job.device)
        result.update(_numbers(run, job.stages))
    except Exception as e:  # noqa: BLE001 - a trial's failure is data for the sweep table, with its reason
        result["status"] = "failed"
        text = str(e).splitlines()[0] if str(e) else ""
        result["error"] = text if isinstance(e, IclLabError) else f"{type(e).__name__}: {text}"
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _run_stages(run: Run, stages: tuple[str, ...], device: str | None) -> None:
    """Each stage is skipped when its stored results are already up to date (as `--reuse`); the
    measurements run in fp32 on `device` whatever dtype trained the run."""
    if "analyze" in stages and not is_analysed([run]):
        analyze([run], device=device)
    if "ablate" in stages and not is_ablated(run):
        ablate_run(run, device=device)
    if "report" in stages and not _report_fresh(run):
        write_report([run.path])


def _report_fresh(run: Run) -> bool:
    """report.html is newer than everything it reads."""
    report = run.path / "report.html"
    if not report.is_file():
        return False
    inputs = [p for p in (run.layout.log, run.layout.summary, run.layout.metrics) if p.is_file()]
    return all(p.stat().st_mtime <= report.stat().st_mtime for p in inputs)


def _numbers(run: Run, stages: tuple[str, ...]) -> dict:
    """The few numbers a sweep table shows for one run."""
    log = run.log
    out = {"final_loss": float(log.loss.iloc[-1]) if len(log) else None}
    if stages and Path(run.layout.summary).is_file():  # analysed here or by an earlier sweep
        s = run.summary()
        out.update(icl_score=s["icl_score"]["final"], phase_change=bool(s["phase_change"]["detected"]),
                   phase_change_tokens=s["phase_change"]["start_tokens"],
                   induction_heads=[f"L{h['layer']}H{h['head']}" for h in s["induction_heads"]])
    return out
