"""Sweeps: train and analyse a family of runs (a preset, a grid of dotted overrides, seeds) described
in one YAML file, on a local process pool, SLURM (through submitit) or Ray. It sits above the
pipeline and the report, beside `reproduce`, and below the CLI (`icl-lab sweep`).

Example:
    >>> from icl_lab.sweep import load_sweep, expand, run_sweep
    >>> spec = load_sweep("sweeps/layers.yaml")
    >>> result = run_sweep(expand(spec, "runs/layers"), "runs/layers", executor="local", n_jobs=2)
    >>> [(t["name"], t["icl_score"]) for t in result.trials]
"""

from icl_lab.sweep.executors import EXECUTORS, SweepResult, default_threads, run_sweep
from icl_lab.sweep.job import run_job
from icl_lab.sweep.spec import STAGES, Job, SweepSpec, expand, load_sweep

__all__ = ["EXECUTORS", "STAGES", "Job", "SweepResult", "SweepSpec", "default_threads", "expand", "load_sweep",
           "run_job", "run_sweep"]
