"""The grokking lab: a second model organism. Train a 1-layer transformer on (a + b) mod p from a
30% share of the pairs with weight decay (or reuse the run), measure Nanda et al.'s progress
measures at every checkpoint, find the memorisation, circuit-formation and cleanup phases, take the
final model apart in the Fourier basis and write the run's report page. Sits beside `reproduce` and
`oocr`, after `report` in the flow data -> model -> train -> run -> measure -> report -> grokking -> cli.

Example:
    >>> from icl_lab.grokking import run_grokking
    >>> result = run_grokking(seed=0, out="runs/grokking")
    >>> result.summary["phases"]["cleanup"], result.summary["key_freqs"]
"""

from icl_lab.grokking.lab import GrokkingResult, grok_experiment, measure_grokking, run_grokking

__all__ = ["GrokkingResult", "grok_experiment", "measure_grokking", "run_grokking"]
