"""`SweepSpec`: a family of runs described in one YAML file (a base preset, seeds, a grid of dotted
config overrides, the stages that follow training), validated up front by building every config,
and expanded into named `Job`s in a fixed order. The executors (`sweep.executors`) run the jobs."""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator

from icl_lab._config import FrozenConfig
from icl_lab.engines import slurm_parameters
from icl_lab.errors import ConfigError
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.presets import get_preset

STAGES = ("analyze", "ablate", "report")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")  # run directory names stay portable


class SweepSpec(FrozenConfig):
    """One sweep file.

    Attributes:
        preset: the base experiment (`icl-lab presets`).
        seeds: run seeds; every grid point is trained once per seed.
        grid: dotted config field -> values, e.g. `{"model.n_layers": [1, 2, 3]}`; the sweep is
            the product of all value lists.
        then: stages after training, run in the order analyze, ablate, report.
        out: folder of the runs (relative to the working directory); `--out` overrides it.
        slurm: `submitit` parameters for `--executor slurm` (e.g. `slurm_partition`, `timeout_min`,
            `mem_gb`); they override icl-lab's defaults, and an unknown key is refused with the valid ones.
    """

    preset: str
    seeds: list[int] = Field(default=[0], min_length=1)
    grid: dict[str, list[Any]] = {}
    then: list[str] = []
    out: str | None = None
    slurm: dict[str, Any] = {}

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a seed; list each seed once")
        return seeds

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, grid: Any) -> Any:
        if not isinstance(grid, dict):
            return grid  # pydantic reports the type
        for key, values in grid.items():
            if not isinstance(values, list):
                raise ValueError(f"{key} must be a list of values, e.g. [{values!r}]")
            if not values:
                raise ValueError(f"{key} has no values; give at least one or remove the field")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"{key} repeats a value; list each value once")
        return grid

    @field_validator("then")
    @classmethod
    def _known_stages(cls, then: list[str]) -> list[str]:
        for stage in then:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        return [s for s in STAGES if s in then]  # ablate and report read what analyze stored


@dataclass(frozen=True)
class Job:
    """One trial: a config, the run directory it trains into and the stages that follow.

    Attributes:
        name: the run directory's name, from the varying grid fields and the seed (`n_layers=2-seed0`).
        config: the whole experiment as JSON data (plain data travels to any executor).
        out: the run directory.
        stages: stages after training, in order.
        point: the grid values of this trial (dotted field -> value), for the family table.
        seed: its seed.
        device: where it trains and measures ("cpu", "cuda", "auto"; None: the config's `train.device`
            for training and the CPU for the stages). Not part of the run: config.json keeps "auto".
    """

    name: str
    config: dict
    out: str
    stages: tuple[str, ...]
    point: dict = field(default_factory=dict)
    seed: int = 0
    device: str | None = None


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file, including every config it expands to.

    Raises:
        ConfigError: the file is missing or not YAML, or any field, preset, grid field or value is
            invalid (one line naming the field and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found; pass a YAML file such as sweeps/layers.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"sweep file {path} is not valid YAML{where}: {problem}; fix the file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"sweep file {path} is not UTF-8 text (byte {e.start}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a mapping with at least `preset:`; see sweeps/layers.yaml")
    spec = SweepSpec.parse(data, where=f"sweep file {path.name}")
    expand(spec, Path("."), where=path.name)  # builds every config: a bad value fails before any training
    if spec.slurm and importlib.util.find_spec("submitit") is not None:  # without it, checked at submission
        try:
            slurm_parameters(spec.slurm, 1, 1)
        except ConfigError as e:
            raise ConfigError(f"sweep file {path.name}: {e}") from None
    return spec


def _check_field(base: ExperimentConfig, key: str, where: str) -> None:
    """Name an unknown dotted field and its nearest spelling before pydantic's generic message."""
    if key == "seed":
        raise ConfigError(f"{where}: grid field seed: list seeds under `seeds:` instead")
    node: Any = base
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, BaseModel):
            raise ConfigError(f"{where}: grid field {key}: {'.'.join(parts[:i])} is a value, not a section; "
                              f"remove .{'.'.join(parts[i:])}")
        fields = list(type(node).model_fields)
        if part not in fields:
            near = difflib.get_close_matches(part, fields, n=1)
            hint = f"did you mean {'.'.join(parts[:i] + near)}?" if near else f"fields here: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown grid field {key}; {hint}")
        node = getattr(node, part)


def _nested(point: dict[str, Any]) -> dict[str, Any]:
    """{"model.n_layers": 2, "train.steps": 30} -> {"model": {"n_layers": 2}, "train": {"steps": 30}}."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _labels(grid: dict[str, list]) -> dict[str, str]:
    """Short labels of the varying fields: the last part of the name unless two fields share it."""
    varying = [k for k, v in grid.items() if len(v) > 1]
    lasts = [k.rsplit(".", 1)[-1] for k in varying]
    return {k: (last if lasts.count(last) == 1 else k) for k, last in zip(varying, lasts)}


def _job_name(point: dict[str, Any], labels: dict[str, str], seed: int) -> str:
    parts = [f"{labels[k]}={v}" for k, v in point.items() if k in labels] + [f"seed{seed}"]
    return _UNSAFE.sub("_", "-".join(parts))


def expand(spec: SweepSpec, out: str | Path, where: str = "sweep", device: str | None = None,
           dtype: str | None = None) -> list[Job]:
    """The sweep's jobs: the grid's product (fields in file order, values in list order), each
    with every seed; the same file always gives the same jobs in the same order.

    Args:
        spec: the validated sweep.
        out: the sweep folder; job `j` trains into `out / j.name`.
        where: how error messages name the sweep (its file name).
        device: where every trial trains and measures (`Job.device`; not part of any run).
        dtype: every trial's `train.dtype` ("fp32" or "bf16" autocast): part of each run, as a
            one-value grid field would be.

    Returns:
        The jobs.

    Raises:
        ConfigError: an unknown preset or grid field, or a value the config rejects.
    """
    try:
        base = get_preset(spec.preset)
    except ConfigError as e:
        raise ConfigError(f"{where}: preset: {e}") from None
    for key in spec.grid:
        _check_field(base, key, where)
    if dtype is not None:
        if "train.dtype" in spec.grid:
            raise ConfigError(f"{where}: the grid sweeps train.dtype; drop --dtype or the grid field")
        try:
            base = base.replace(train={"dtype": dtype})
        except ConfigError:
            raise ConfigError(f"unknown --dtype {dtype!r}; choose fp32 or bf16") from None
    if device not in (None, "auto", "cpu", "cuda"):
        raise ConfigError(f"unknown --device {device!r}; choose auto, cpu or cuda")
    labels = _labels(spec.grid)
    jobs, names = [], set()
    for values in itertools.product(*spec.grid.values()):
        point = dict(zip(spec.grid, values))
        for seed in spec.seeds:
            try:
                cfg = base.replace(seed=seed, **_nested(point))
            except ConfigError as e:
                shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
                raise ConfigError(f"{where}: grid point {shown}: {e}; change that value") from None
            name = _job_name(point, labels, seed)
            if name in names:  # two values that only differ in characters a folder name cannot hold
                raise ConfigError(f"{where}: two grid points share the run name {name}; make their values distinct")
            names.add(name)
            jobs.append(Job(name, cfg.model_dump(mode="json"), str(Path(out) / name), tuple(spec.then), point, seed, device))
    return jobs
