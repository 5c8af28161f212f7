"""The verdict: three sentences a researcher reads first. Was there a phase change, and when;
which heads are induction heads; how much of the ICL score ablating them removes. The report's
verdict box and the CLI print the same lines.

Induction heads are the analysis summary's, chosen by the one rule in `icl_lab.measure.induction`
(prefix matching > 0.5 and copying > 0.5); the CLI and `reproduce` read the same list."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icl_lab.errors import CheckpointError
from icl_lab.intervene.ablate import ablate_head_group
from icl_lab.intervene.attribution import removed_fraction
from icl_lab.measure.evalset import eval_set_for
from icl_lab.measure.placement import place
from icl_lab.measure.induction import induction_rule
from icl_lab.measure.losses import icl_score, loss_by_token
from icl_lab.run.rundir import Run

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
    rule = summary.get("induction_rule", {}).get("rule", induction_rule())
    return heads, rule if heads else ""


@torch.inference_mode()
def judge(run: Run, n_examples: int = 256, device: str | None = None, dtype: str | None = None) -> Verdict:
    """The verdict on one analysed run (ablating its induction heads together at the last step)."""
    try:
        summary = run.summary()
    except CheckpointError:  # not analysed yet: the verdict says so instead of failing
        return Verdict(run.path.name, analysed=False)
    pc = summary["phase_change"]
    heads, criterion = induction_heads(summary)
    removed = None
    if heads:
        ev = eval_set_for(run, n_examples)
        losses = ablate_head_group(place(run.model(), device, dtype), ev.tokens, heads, kind="zero", pattern_preserving=True)
        clean, ablated = (icl_score(loss_by_token(x.float().cpu())) for x in losses)
        removed = removed_fraction(clean, ablated)
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
        else:
            ablation.append(f"{v.run} has no induction heads (ICL score {v.icl_score:+.2f} nats)")
    return [f"Phase change: {phase}{suffix}.", f"Induction heads: {heads}.",
            f"Ablation (pattern-preserving, zero): {'; '.join(ablation)}."]
