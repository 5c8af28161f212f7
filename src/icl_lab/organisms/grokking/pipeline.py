"""Grokking measured over a run, as a measurement object: every checkpoint's progress measures
(`icl_lab.organisms.grokking.measure`) as `grokking.{measure}` rows (and `grokking.embed_norm.{k}`, the
embedding's norm in frequency k), then the three phases found from them
(`icl_lab.organisms.grokking.phases`) and the final model's circuit
(`icl_lab.organisms.grokking.circuit`), summarised in `analysis/grokking.json`."""

from __future__ import annotations

from collections.abc import Sequence

from icl_lab.organisms.grokking.task import ModularTask, build_split
from icl_lab.kinds import organism
from icl_lab.io import write_json
from icl_lab.measure.evalset import EvalSet
from icl_lab.organisms.grokking.measure import embedding_frequency_norms, key_frequencies, progress_measures
from icl_lab.organisms.grokking.circuit import analyze_circuit
from icl_lab.organisms.grokking.phases import find_phases
from icl_lab.pipeline.base import Context, Measurement, Progress, register, store_rows, walk
from icl_lab.organisms.grokking.results import PREFIX
from icl_lab.organisms.grokking.results import grokking_path, grokking_summary, grokking_table
from icl_lab.run.results import is_fresh
from icl_lab.run.rundir import Run


def task_of(run: Run) -> ModularTask:
    """The run's modular-addition split.

    Raises:
        ConfigError: the run trained on something else.
    """
    return build_split(organism("modular").section_of(run))


@register
class Grokking(Measurement):
    """Nanda et al.'s progress measures at every checkpoint of a modular-addition run. The key
    frequencies are the final model's, so the restricted and excluded losses of every checkpoint
    measure the circuit the run ends with; `save` writes the phases and the final circuit."""

    name, description = "grokking", "train/test loss and accuracy, Fourier norms, restricted/excluded loss, weight norm (modular runs)"
    needs_eval_set = False

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        self.task = task_of(run)
        self.run = run
        final = run.model(device=device or "cpu")
        self.freqs = key_frequencies(embedding_frequency_norms(final, self.task.p))
        self.circuit = analyze_circuit(final, self.task.p, self.freqs)

    def measure(self, ctx: Context) -> list[dict]:
        values = progress_measures(ctx.model, self.task, self.freqs)
        values |= {f"embed_norm.{k + 1}": float(v) for k, v in enumerate(embedding_frequency_norms(ctx.model, self.task.p))}
        return [ctx.row(PREFIX + name, v) for name, v in values.items()]

    def save(self, run: Run) -> None:
        wide = grokking_table(run)
        cfg = run.config
        final = {k: float(v) for k, v in wide.iloc[-1].items() if k != "step" and not k.startswith("embed_norm.")}
        write_json(grokking_path(run), {
            "run": str(run.path), "p": self.task.p, "frac": cfg.data.modular.frac, "split_seed": cfg.data.modular.split_seed,
            "seed": cfg.seed, "weight_decay": cfg.train.weight_decay, "step": run.checkpoints[-1], "key_freqs": self.freqs,
            "final": final, "grokked": final["test_accuracy"] >= 0.99, "phases": find_phases(wide), "circuit": self.circuit,
        })


def evaluate_run(run: Run, progress: Progress | None = None, device: str = "cpu", steps: Sequence[int] | None = None,
                 dtype: str | None = None) -> dict:
    """Measure every checkpoint of a modular-addition run, replace the `grokking.` rows of its
    metrics table, find its phases, take its final model apart and write `analysis/grokking.json`.

    Returns:
        The summary: `{run, p, frac, split_seed, seed, weight_decay, step, key_freqs, final:
        {measure: value}, grokked, phases (see `find_phases`), circuit (see `analyze_circuit`)}`.

    Raises:
        ConfigError: not a modular-addition run, or it has no checkpoint.
    """
    task_of(run)
    m = Grokking()
    table = walk(run, [m], progress=progress, device=device, dtype=dtype, steps=steps)
    store_rows(run, [m], table, {"key_freqs": m.freqs})
    m.save(run)
    return grokking_summary(run)  # as JSON holds it (frequency keys become strings), whether fresh or reused


def is_evaluated(run: Run) -> bool:
    """Whether `evaluate_run` has run since the run's last checkpoint."""
    return is_fresh(run, grokking_path(run))
