"""Which heads are induction heads: the one rule every part of icl-lab reads (the analysis
summary, the CLI, the report and `reproduce`), after Olsson et al. (2022), "In-context Learning
and Induction Heads", section "Key Concepts": a head that prefix-matches on repeated random
tokens and copies what it attends to. The thresholds are recorded in every summary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

INDUCTION_THRESHOLDS = {"prefix_matching": 0.5, "copying": 0.5}  # strictly greater than each


def induction_rule() -> str:
    """The rule in words, e.g. "prefix_matching > 0.5 and copying > 0.5"."""
    return " and ".join(f"{m} > {t}" for m, t in INDUCTION_THRESHOLDS.items())


def is_induction_head(scores: Mapping) -> bool:
    """Whether one head's final scores (a mapping with every thresholded metric) pass the rule."""
    return all(scores[m] > t for m, t in INDUCTION_THRESHOLDS.items())


def induction_heads(heads: Iterable[Mapping]) -> list[tuple[int, int]]:
    """(layer, head) of every head record (`{layer, head, prefix_matching, copying, ...}`, as in
    `summary.json`'s `heads`) that passes the rule, in the records' order."""
    return [(int(h["layer"]), int(h["head"])) for h in heads if is_induction_head(h)]
