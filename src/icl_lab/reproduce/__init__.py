"""The reproduce stage: the six arguments of Olsson et al. (2022), "In-context Learning and
Induction Heads", re-measured on a lab of small models, each with a verdict table whose
thresholds are fixed in code. After `report` in the flow data -> model -> train -> run ->
measure -> intervene -> report -> reproduce -> cli.

Example:
    >>> from icl_lab.reproduce import reproduce
    >>> result = reproduce(["argument-5"], out="runs/reproduce")
    >>> [(c.metric, c.value, c.passed) for c in result.checks]
"""

from icl_lab.reproduce.family import MODELS, SCALES, Lab, Scale, experiment
from icl_lab.reproduce.reproduction import ARGUMENTS, Reproduction, parse_arguments, reproduce
from icl_lab.reproduce.verdict import Check, Section, check

__all__ = [
    "ARGUMENTS", "MODELS", "SCALES", "Check", "Lab", "Reproduction", "Scale", "Section", "check", "experiment",
    "parse_arguments", "reproduce",
]
