"""The grokking organism: train a 1-layer transformer on (a + b) mod p from a 30% share of the
pairs with weight decay (or reuse the run), measure Nanda et al.'s progress measures at every
checkpoint, find the memorisation, circuit-formation and cleanup phases, take the final model apart
in the Fourier basis and write the run's report page. Everything it needs is in this folder: the
task and its stream (`task`), the measures (`measure`, `circuit`, `phases`), the measurement object
(`pipeline`), the stored results (`results`), the page (`figures`, `page`), the lab runner
(`lab`), the preset and the `icl-lab grok` command (docs/grokking.md).

Example:
    >>> from icl_lab.organisms.grokking import run_grokking
    >>> result = run_grokking(seed=0, out="runs/grokking")
    >>> result.summary["phases"]["cleanup"], result.summary["key_freqs"]
"""

from icl_lab.kinds import Organism, register
from icl_lab.organisms.grokking import presets
from icl_lab.organisms.grokking.lab import GrokkingResult, grok_experiment, measure_grokking, run_grokking
from icl_lab.organisms.grokking.pipeline import Grokking
from icl_lab.organisms.grokking.task import ModularConfig, ModularStream, ModularTask, build_split, task_problem


def _commands(app) -> None:
    from icl_lab.organisms.grokking.cli import add_commands

    add_commands(app)


# no report section: a grokking run's page is its own (`write_grokking_report`), and the shared
# report shows its loss curve only
ORGANISM = register(Organism(
    kind="modular", title="modular-addition", how_to_train="train one with `icl-lab grok`",
    config=ModularConfig, stream=ModularStream, problem=task_problem, how_to_measure="measure it with `icl-lab grok --run {run}`",
    measurements=(Grokking.name,), add_commands=_commands,
))
presets.register_presets()

__all__ = ["Grokking", "GrokkingResult", "ModularConfig", "ModularStream", "ModularTask", "ORGANISM", "build_split",
           "grok_experiment", "measure_grokking", "run_grokking"]
