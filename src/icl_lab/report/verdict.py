"""The verdict: three sentences a researcher reads first. Was there a phase change, and when;
which heads are induction heads; how much of the ICL score ablating them removes. The report's
verdict box and the CLI print the same lines.

Induction heads are the analysis summary's, chosen by the one rule in `icl_lab.measure.induction`
(prefix matching > 0.5 and max(copying, copying_total) > 0.5); the CLI, the report's colours and
`reproduce` read the same list. The share
their joint ablation removes is the one `analyze` stored (`summary["induction_ablation"]`): the
verdict reads, never runs a model."""

from __future__ import annotations

from dataclasses import dataclass

from icl_lab.errors import CheckpointError
from icl_lab.run.files import RunFiles

INDUCTION_RULE = "prefix_matching > 0.5 and copying > 0.5"  # for summaries that predate `induction_rule`


@dataclass(frozen=True)
class Verdict:
    """One run's verdict.

    Attributes:
        run: the run's name.
        analysed: whether `icl-lab analyze` has run (else every other field is empty).
        phase_change: (start, end) in tokens, or None.
        induction_heads: (layer, head) pairs.
        criterion: the rule the heads were chosen by.
        removed: share of the ICL score that pattern-preserving zero-ablation of all of them
            together removes, at the final checkpoint (None when there are none, or no ICL).
        icl_score: final ICL score in nats.
    """

    run: str
    analysed: bool
    phase_change: tuple[float, float] | None = None
    induction_heads: tuple[tuple[int, int], ...] = ()
    criterion: str = ""
    removed: float | None = None
    icl_score: float | None = None


def induction_heads(summary: dict) -> tuple[list[tuple[int, int]], str]:
    """The summary's induction heads and the rule they were chosen by."""
    heads = [(h["layer"], h["head"]) for h in summary["induction_heads"]]
    rule = summary.get("induction_rule", {}).get("rule", INDUCTION_RULE)
    return heads, rule if heads else ""


def judge(run: RunFiles) -> Verdict:
    """The verdict on one run, from its stored analysis (not analysed: a verdict that says so)."""
    try:
        summary = run.summary()
    except CheckpointError:  # not analysed yet: the verdict says so instead of failing
        return Verdict(run.path.name, analysed=False)
    pc = summary["phase_change"]
    heads, criterion = induction_heads(summary)
    removed = (summary.get("induction_ablation") or {}).get("removed") if heads else None
    return Verdict(run.path.name, analysed=True,
                   phase_change=(pc["start_tokens"], pc["end_tokens"]) if pc["detected"] else None,
                   induction_heads=tuple(heads), criterion=criterion, removed=removed,
                   icl_score=summary["icl_score"]["final"])


def _tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _names(heads) -> str:
    return ", ".join(f"L{l}H{h}" for l, h in heads)


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    """Three lines: phase change, induction heads, ablation, each covering every run."""
    pending = [v.run for v in verdicts if not v.analysed]
    done = [v for v in verdicts if v.analysed]
    suffix = f" ({', '.join(pending)} not analysed yet: run `icl-lab analyze`)" if pending else ""
    if not done:
        return [f"Phase change: unknown{suffix}.", "Induction heads: unknown.", "Ablation: unknown."]
    phase = "; ".join(f"{v.run} at {_tokens(v.phase_change[0])}-{_tokens(v.phase_change[1])} tokens" if v.phase_change
                      else f"{v.run} none" for v in done)
    heads = "; ".join(f"{v.run} {_names(v.induction_heads)} ({v.criterion})" if v.induction_heads
                      else f"{v.run} none" for v in done)
    ablation = []
    for v in done:
        if v.removed is not None:
            ablation.append(f"{v.run} {_names(v.induction_heads)} removes {v.removed:.0%} of the ICL score "
                            f"({v.icl_score:+.2f} nats)")
        elif v.induction_heads:
            ablation.append(f"{v.run} {_names(v.induction_heads)}: share removed not stored (no in-context learning to remove, "
                            f"or an analysis from an older icl-lab: rerun `icl-lab analyze`) (ICL score {v.icl_score:+.2f} nats)")
        else:
            ablation.append(f"{v.run} has no induction heads (ICL score {v.icl_score:+.2f} nats)")
    return [f"Phase change: {phase}{suffix}.", f"Induction heads: {heads}.",
            f"Ablation (pattern-preserving, zero): {'; '.join(ablation)}."]
