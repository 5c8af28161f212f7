"""The in-context Markov-chain organism (Edelman et al. 2024, "The evolution of statistical
induction heads"): every sequence comes from its own random Markov chain, so the best predictor is
the in-context bigram statistic, and a small transformer passes through stages (uniform ->
in-context unigram -> in-context bigram) with plateaus between, ending with a statistical
induction head. Everything is in this folder: the task and its stream (`task`), the strategies,
KLs, stages and head scores (`measure`), the measurement object (`pipeline`), the stored results
(`results`), the report section (`report`), the lab runner (`lab`), the `markov-2l` preset and the
`icl-lab markov` command (docs/organisms.md).

Example:
    >>> from icl_lab.organisms.markov import run_markov
    >>> result = run_markov(seed=0, out="runs/markov")
    >>> result.summary["stages"]   # [{'stage': 'uniform', 'start': 0, 'end': ...}, {'stage': 'unigram', ...}, ...]
"""

from icl_lab.kinds import Organism, register
from icl_lab.organisms.markov import presets
from icl_lab.organisms.markov.lab import MarkovResult, markov_experiment, measure_markov, run_markov
from icl_lab.organisms.markov.measure import (
    STRATEGIES,
    kl_to_strategies,
    stage_ranges,
    statistical_induction_scores,
    strategy_probs,
)
from icl_lab.organisms.markov.pipeline import MarkovStages, viewer_samples
from icl_lab.organisms.markov.task import MarkovConfig, MarkovStream, sample_chains, task_problem


def _report():
    from icl_lab.organisms.markov.report import SECTION  # plotly loads only when a report is drawn

    return SECTION


def _commands(app) -> None:
    from icl_lab.organisms.markov.cli import add_commands

    add_commands(app)


ORGANISM = register(Organism(
    kind="markov", title="in-context Markov-chain", how_to_train="train one with `icl-lab markov --train`",
    config=MarkovConfig, stream=MarkovStream, problem=task_problem, how_to_measure="measure it with `icl-lab markov {run}`",
    measurements=(MarkovStages.name,), viewer_samples=viewer_samples, report=_report, add_commands=_commands,
))
presets.register_presets()

__all__ = ["MarkovConfig", "MarkovResult", "MarkovStages", "MarkovStream", "ORGANISM", "STRATEGIES", "kl_to_strategies",
           "markov_experiment", "measure_markov", "run_markov", "sample_chains", "stage_ranges", "statistical_induction_scores",
           "strategy_probs"]
