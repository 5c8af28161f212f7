"""Which heads are induction heads: the one rule every part of icl-lab reads (the analysis
summary, the CLI, the report's colours and composition graph, the text signals and `reproduce`),
after Olsson et al. (2022), "In-context Learning and Induction Heads", section "Key Concepts": a
head that prefix-matches on repeated random tokens and copies what it attends to, directly or
through later layers (`copying_total`, docs/decisions.md decision 26). The thresholds are recorded
in every summary."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

INDUCTION_THRESHOLDS = {"prefix_matching": 0.5, "copying": 0.5}  # strictly greater than each; copying reads
COPYING_METRICS = ("copying", "copying_total")  # ... the larger of these two (a missing or NaN one counts as absent)


def induction_rule() -> str:
    """The rule in words: "prefix_matching > 0.5 and max(copying, copying_total) > 0.5"."""
    pm, copy = INDUCTION_THRESHOLDS["prefix_matching"], INDUCTION_THRESHOLDS["copying"]
    return f"prefix_matching > {pm} and max({', '.join(COPYING_METRICS)}) > {copy}"


def copying_evidence(scores: Mapping) -> float:
    """The larger of a head's direct and total copying scores (NaN when it has neither)."""
    values = [float(scores[m]) for m in COPYING_METRICS if scores.get(m) is not None and not math.isnan(float(scores[m]))]
    return max(values) if values else math.nan


def is_induction_head(scores: Mapping) -> bool:
    """Whether one head's final scores (a mapping with `prefix_matching` and `copying`, and
    `copying_total` where it was measured) pass the rule."""
    copy = copying_evidence(scores)
    prefix = float(scores.get("prefix_matching", math.nan))
    return prefix > INDUCTION_THRESHOLDS["prefix_matching"] and copy > INDUCTION_THRESHOLDS["copying"]


def induction_heads(heads: Iterable[Mapping]) -> list[tuple[int, int]]:
    """(layer, head) of every head record (`{layer, head, prefix_matching, copying, ...}`, as in
    `summary.json`'s `heads`) that passes the rule, in the records' order."""
    return [(int(h["layer"]), int(h["head"])) for h in heads if is_induction_head(h)]


PREVIOUS_TOKEN_HEAD = 0.5  # a layer-0 head whose previous-token score on text is above this


def previous_token_heads(previous_token: Sequence[Sequence[float]]) -> list[list[int]]:
    """[[0, head], ...] of the layer-0 heads whose previous-token score ([layer][head]) is above
    PREVIOUS_TOKEN_HEAD: the one definition of a previous-token head (issue #26). Layer 0 only,
    because it is the head the induction circuit's K-composition builds on (Olsson et al.'s
    two-layer circuit); a later head that attends to the previous token is not counted."""
    return [[0, head] for head, score in enumerate(previous_token[0]) if float(score) > PREVIOUS_TOKEN_HEAD]


def passes_direct_rule(scores: Mapping) -> bool:
    """#10's rule as it was before decision 26, prefix_matching > 0.5 and direct copying > 0.5:
    what the natural-text presets are judged by as well (issue #26 asks for it unchanged)."""
    return all(float(scores.get(m, math.nan)) > t for m, t in INDUCTION_THRESHOLDS.items())
