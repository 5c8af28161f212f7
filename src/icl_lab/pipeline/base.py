"""The measurement pipeline's core: `Measurement` objects, their registry, and `walk`, which loads
each checkpoint of a run once and hands it to every measurement that wants it.

A measurement is a small object in the spirit of devinterp's callbacks: a `name`, what it `needs`
from the shared per-checkpoint context (the evaluation set, the clean per-token losses, ...), and
`measure(ctx)`, which returns tidy rows. `walk` owns the checkpoint loop; `store_rows` merges the
rows into the run's `MetricsStore`, replacing exactly the metrics the measurements own.

Adding a measure is one class and one `@register`:

    >>> @register
    ... class MeanLogitNorm(Measurement):
    ...     name = "mean_logit_norm"
    ...     def measure(self, ctx):
    ...         return [ctx.row(self.name, float(ctx.model(ctx.ev.tokens[:8]).norm(dim=-1).mean()))]
    >>> icl_lab.pipeline.measure_run(run, ["mean_logit_norm"])   # or `icl-lab analyze RUN --only mean_logit_norm`
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch

from icl_lab.errors import ConfigError
from icl_lab.measure.evalset import EvalSet
from icl_lab.measure.losses import per_token_losses
from icl_lab.measure.memory import DEFAULT_MAX_BYTES, forward_row_bytes
from icl_lab.model.config import ModelConfig
from icl_lab.measure.placement import place
from icl_lab.model.transformer import Transformer
from icl_lab.pipeline.evalstore import eval_set_for
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights_into
from icl_lab.train.interventions import held_hooks
from icl_lab.train.trainer import library_versions

Progress = Callable[[str, int, int], None]  # (run name, checkpoints done, total)

# What a measurement may `need`, computed at most once per checkpoint and shared. A provider gets
# the context and every shared name the checkpoint's measurements declared (`Measurement.needs`),
# and returns a dict of shared values: one pass may fill several (`icl_lab.pipeline.analysis`).
PROVIDERS: dict[str, Callable[["Context", frozenset[str]], dict[str, Any]]] = {
    "per_token_losses": lambda ctx, wanted: {
        "per_token_losses": per_token_losses(ctx.model, ctx.ev.tokens, ctx.max_bytes).float().cpu()},  # [example, pos-1]
}

# Objects the measurements' `start`s share within one walk (a random-init model for every head
# score's baseline), dropped before the first checkpoint is loaded so two models never coexist.
_START_SHARED: dict[Any, Any] = {}


def shared_at_start(key: Any, build: Callable[[], Any]) -> Any:
    """An object built once for all the measurements' `start` calls of one walk, and released
    (with every other such object) when the starts are done."""
    if key not in _START_SHARED:
        _START_SHARED.clear()  # one at a time: a new key replaces the old object
        _START_SHARED[key] = build()
    return _START_SHARED[key]


def start_all(ms: Sequence["Measurement"], run: Run, ev: EvalSet | None, device: str | None, dtype: str | None,
              max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Every measurement's per-run `start`, each with the working budget `max_bytes`; what the
    starts shared (`shared_at_start`) is released afterwards, even on error."""
    try:
        for m in ms:
            m.max_bytes = max_bytes
            m.start(run, ev, device, dtype)
    finally:
        _START_SHARED.clear()


@dataclass
class Context:
    """One checkpoint, as every measurement sees it.

    Attributes:
        run: the run being walked.
        step, tokens: the checkpoint's step and training tokens seen.
        steps: every step the walk visits (a measurement may want only some).
        model: the model with this checkpoint's weights, in eval mode, on the walk's device.
        ev: the run's evaluation set (None when no measurement needs one).
        max_bytes: the working budget of each measurement's intermediates (docs/pipeline.md,
            "Memory contract"): pass it on to the measure functions, which chunk by it.
        requested: the shared intermediates the checkpoint's measurements declared they need, so
            a provider can fill several in one pass.
    """

    run: Run
    step: int
    tokens: int
    steps: list[int]
    model: Transformer
    ev: EvalSet | None
    max_bytes: int = DEFAULT_MAX_BYTES
    requested: frozenset[str] = frozenset()
    _shared: dict[str, Any] = field(default_factory=dict)

    def need(self, name: str) -> Any:
        """A shared intermediate (see `PROVIDERS`), computed on first use at this checkpoint."""
        if name not in self._shared:
            self._shared.update(PROVIDERS[name](self, self.requested | {name}))
        return self._shared[name]

    def row(self, metric: str, value: float, **extra: Any) -> dict:
        """One tidy row of this checkpoint."""
        return {"run": self.run.path.name, "step": self.step, "tokens": self.tokens, "metric": metric, "value": value, **extra}


class Measurement:
    """One thing measured at checkpoints. Subclasses set `name` (and `description`), and override
    `measure`; `start` runs once per run before the walk, `wants` picks checkpoints, `owns` says
    which stored metrics are this measurement's (replaced when it runs again), `settings` what it
    was computed with (its provenance), `save` writes anything kept outside the table."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_eval_set: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()  # the shared intermediates (`PROVIDERS`) it reads through `ctx.need`
    needs_grad: ClassVar[bool] = False  # e.g. the LLC's SGLD chains: the walk then leaves autograd on
    fans_out: ClassVar[bool] = True  # rows depend only on (run, checkpoint): can run as fan-out tasks
    max_bytes: int = DEFAULT_MAX_BYTES  # the working budget, set by the walk before `start`

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        """Per-run setup before the walk (e.g. a random-init baseline)."""

    def wants(self, step: int, steps: Sequence[int]) -> bool:
        """Whether to measure this checkpoint (default: all of them)."""
        return True

    def measure(self, ctx: Context) -> list[dict]:
        raise NotImplementedError

    def owns(self, metric: str) -> bool:
        """Whether a stored metric belongs to this measurement (its rows are replaced on a re-run)."""
        return metric == self.name or metric.startswith(self.name + ".")

    def settings(self) -> dict:
        return {}

    def floor_bytes(self, cfg: ModelConfig, ev: EvalSet | None, itemsize: int) -> int:
        """The least working memory this measurement needs: one evaluation sequence's forward
        with its logits (docs/pipeline.md, "Memory contract"); 0 without an evaluation set."""
        return 0 if ev is None or not self.needs_eval_set else forward_row_bytes(cfg, ev.tokens.shape[1], itemsize)

    def save(self, run: Run) -> None:
        """After the walk and the table's merge: write what this measurement keeps outside the
        table (the viewer's patterns, a summary); nothing by default."""


REGISTRY: dict[str, type[Measurement]] = {}


def register(cls: type[Measurement]) -> type[Measurement]:
    """Class decorator: make `cls` available by its name (`measurements([...])`, `analyze --only`)."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no name; set `name = ...` on the class")
    REGISTRY[cls.name] = cls
    return cls


def measurements(names: Iterable[str], options: dict[str, dict] | None = None) -> list[Measurement]:
    """Instances of the registered measurements `names`, in order, each built with its `options[name]`.

    Raises:
        ConfigError: an unknown name; the message lists the known ones.
    """
    out = []
    for name in names:
        if name not in REGISTRY:
            raise ConfigError(f"unknown measurement {name!r}; choose from {', '.join(sorted(REGISTRY))}")
        out.append(REGISTRY[name](**(options or {}).get(name, {})))
    return out


def walk(run: Run, ms: Sequence[Measurement], ev: EvalSet | None = None, steps: Sequence[int] | None = None,
         progress: Progress | None = None, device: str | None = None, dtype: str | None = None,
         max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """Load each checkpoint of `run` once (or of `steps`) and apply every measurement that wants it.
    Each measurement holds at most `max_bytes` of intermediates at once (its memory contract);
    checkpoints are copied into one model in place, so two sets of weights never coexist.

    Returns:
        The tidy rows of all measurements (empty frame when none produced any).

    Raises:
        ConfigError: the run has no checkpoints, or a measurement needs an evaluation set and none was given.
    """
    steps = list(run.checkpoints if steps is None else steps)
    if not steps:
        raise ConfigError(f"{run.path} has no checkpoints yet; train it first")
    if ev is None and any(m.needs_eval_set for m in ms):
        raise ConfigError(f"{', '.join(m.name for m in ms if m.needs_eval_set)} need the run's evaluation set")
    start_all(ms, run, ev, device, dtype, max_bytes)
    model = place(Transformer(run.config.model), device, dtype).eval()
    per_step = run.config.train.batch_size * run.config.model.n_ctx
    rows: list[dict] = []
    with torch.inference_mode(not any(m.needs_grad for m in ms)):
        for i, step in enumerate(steps):
            active = [m for m in ms if m.wants(step, steps)]
            if active:
                load_weights_into(model, run.layout.checkpoint(step))
                ctx = Context(run, step, step * per_step, steps, model, ev, max_bytes, frozenset(n for m in active for n in m.needs))
                with model.hooks(held_hooks(run.meta, step, model)):  # a branch's intervention, where it was held
                    for m in active:
                        rows += m.measure(ctx)
            if progress is not None:
                progress(run.path.name, i + 1, len(steps))
    return pd.DataFrame(rows)


def store_rows(run: Run, ms: Sequence[Measurement], table: pd.DataFrame, settings: dict | None = None) -> pd.DataFrame:
    """Merge `table` into the run's store: every stored metric the measurements own is replaced,
    other stages' rows stay; each metric's provenance is its measurement's settings plus `settings`
    and the library versions. Returns the stored table."""
    stored = set(run.store.read(["metric"]).metric.unique()) if run.store.exists() else set()
    new = set(table.metric.unique()) if len(table) else set()
    clear = {metric for metric in stored | new if any(m.owns(metric) for m in ms)}
    provenance = {}
    for metric in new:
        owner = next((m for m in ms if m.owns(metric)), None)
        provenance[metric] = {"measurement": owner.name if owner else None, "versions": library_versions(),
                              **(owner.settings() if owner else {}), **(settings or {})}
    if table.empty and not clear:  # e.g. only the viewer ran: no table to create
        return run.store.read()
    return run.store.write(table, clear=clear, provenance=provenance)


def measure_run(run: Run, names: Sequence[str], ev: EvalSet | None = None, progress: Progress | None = None,
                device: str | None = None, dtype: str | None = None, executor: str | None = None, jobs: int = 1,
                threads: int = 1, options: dict[str, dict] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """Walk `run` with the registered measurements `names` and store their rows. Measurements
    that need an evaluation set get the run's stored one (or a fresh one, stored).

    Args:
        executor: None walks serially; "local", "ray" or "slurm" fans each measurement's
            checkpoints out as tasks (`icl_lab.pipeline.fanout`), `jobs` at once with `threads` each.
        options: name -> keyword arguments of that measurement's constructor.
        max_bytes: each measurement's working budget (docs/pipeline.md, "Memory contract").

    Returns:
        The run's stored table after the merge.
    """
    options = options or {}
    ms = measurements(names, options)
    if ev is None and any(m.needs_eval_set for m in ms):
        ev = eval_set_for(run, store=True)
    if executor is None:
        table = walk(run, ms, ev, progress=progress, device=device, dtype=dtype, max_bytes=max_bytes)
    else:
        from icl_lab.pipeline.fanout import fan_out  # the engines load only when asked for

        start_all(ms, run, ev, device, dtype, max_bytes)  # what `save` needs (e.g. the final model's frequencies)
        table = pd.concat([fan_out(run, m.name, options.get(m.name), engine=executor, n_jobs=jobs, threads=threads,
                                   device=device, dtype=dtype, progress=progress, max_bytes=max_bytes) for m in ms],
                          ignore_index=True)
    stored = store_rows(run, ms, table, {"eval_set": ev.fingerprint} if ev is not None else None)
    for m in ms:
        m.save(run)
    return stored
