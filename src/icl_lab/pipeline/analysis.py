"""The paper's measurements as measurement objects (`icl_lab.pipeline.base`): the loss and ICL
score, loss by token index, the per-token-loss vectors behind the PCA, and every head score next
to the same score of a randomly initialised model. Each is registered under the metric it writes,
so `icl-lab analyze RUN --only prefix_matching,icl_score` measures just those. The functions they
call live in `icl_lab.measure` and touch no files."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from icl_lab.measure.circuits import ov_eigen_positivity
from icl_lab.measure.copying import copying_direct_scores, copying_olsson_scores, copying_scores
from icl_lab.measure.evalset import EVAL_SEED, EvalSet
from icl_lab.measure.head_scores import duplicate_token_mask, masked_pattern_scores, prefix_matching_mask, previous_token_mask
from icl_lab.measure.intervals import mean_interval
from icl_lab.measure.losses import dloss_dlnpos, icl_positions, loss_by_token
from icl_lab.measure.placement import place
from icl_lab.measure.text_signals import passage_losses, repeated_passages
from icl_lab.model.transformer import Transformer
from icl_lab.pipeline.base import Context, Measurement, register
from icl_lab.run.rundir import Run

PREVIOUS_TOKEN_EXAMPLES = 64
PASSAGE_EXAMPLES = 64
_BASELINE: dict[tuple, Transformer] = {}  # one random-init model per (config, device, dtype), shared by the head scores


def clear_baselines() -> None:
    """Drop the cached random-init model (a pretrained model's copy is hundreds of MB)."""
    _BASELINE.clear()


def _mean_row(ctx: Context, metric: str, per_example: torch.Tensor) -> dict:
    lo, hi = mean_interval(per_example)
    return ctx.row(metric, float(per_example.mean()), lo=float(lo), hi=float(hi))


@register
class Loss(Measurement):
    name, description = "loss", "mean next-token loss on the evaluation set, with a 95% bootstrap interval"

    def measure(self, ctx: Context) -> list[dict]:
        return [_mean_row(ctx, "loss", ctx.need("per_token_losses").mean(1))]


@register
class ICLScore(Measurement):
    name, description = "icl_score", "loss at the late token minus loss at the early token (Olsson et al.), per example, with an interval"

    def measure(self, ctx: Context) -> list[dict]:
        per_token = ctx.need("per_token_losses")
        early, late = icl_positions(ctx.ev.tokens.shape[1])
        return [_mean_row(ctx, "icl_score", per_token[:, late - 1] - per_token[:, early - 1])]


@register
class LossByPosition(Measurement):
    name, description = "loss_by_position", "mean loss at each token index, and its slope dLoss/d ln(position)"

    def measure(self, ctx: Context) -> list[dict]:
        by_token = loss_by_token(ctx.need("per_token_losses"))
        rows = [ctx.row("loss_by_position", float(v), position=t) for t, v in enumerate(by_token.tolist()) if t > 0]
        return rows + [ctx.row("dloss_dlnpos", float(v), position=t + 1) for t, v in enumerate(dloss_dlnpos(by_token))]

    def owns(self, metric: str) -> bool:
        return metric in ("loss_by_position", "dloss_dlnpos")


@register
class PerTokenLoss(Measurement):
    """Keeps one loss per evaluation example (at its fixed random token) for the joint PCA, which
    `analyze` fits over the runs sharing an evaluation set and stores as `pca_1..k` rows."""

    name, description = "per_token_loss", "per-token-loss vectors; `analyze` turns them into the pca_1..k rows"

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        self.steps: list[int] = []
        self.vectors: list[np.ndarray] = []

    def measure(self, ctx: Context) -> list[dict]:
        per_token = ctx.need("per_token_losses")
        self.steps.append(ctx.step)
        self.vectors.append(per_token[torch.arange(len(per_token)), ctx.ev.ptl_positions].numpy())
        return []

    def owns(self, metric: str) -> bool:
        return metric.startswith("pca_")


@register
class RepeatedPassage(Measurement):
    """The behavioural check of induction (issue #16): each evaluation example's first half, seen
    twice as [BOS] p p. An induction mechanism makes the second copy cheaper than the first at the
    same offsets within p. `.gain` = first - second (nats), per example, with an interval."""

    name, description = "repeated_passage", "loss on the first and second copy of a repeated evaluation passage, and the gain"

    def measure(self, ctx: Context) -> list[dict]:
        passages, plen = repeated_passages(ctx.ev.tokens[:PASSAGE_EXAMPLES], ctx.ev.first)
        first, second = passage_losses(ctx.model, passages, plen, ctx.ev.first)
        return [_mean_row(ctx, f"{self.name}.{part}", values)
                for part, values in (("first", first), ("second", second), ("gain", first - second))]


class HeadScore(Measurement):
    """A per-head score, stored with its random-init baseline and (when averaged over examples) a
    95% bootstrap interval. Subclasses define `score(model, ev)`: [example, layer, head] or, for
    weights-only scores, [layer, head]."""

    score: Callable[[Transformer, EvalSet], torch.Tensor]

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        key = (run.config.model.model_dump_json(), device, dtype)
        if key not in _BASELINE:
            _BASELINE.clear()
            _BASELINE[key] = place(Transformer(run.config.model, seed=EVAL_SEED), device, dtype).eval()
        with torch.inference_mode():
            base = self.score(_BASELINE[key], ev)
        self.baseline = base.mean(0) if base.ndim == 3 else base  # [layer, head]

    def measure(self, ctx: Context) -> list[dict]:
        per = self.score(ctx.model, ctx.ev)
        values = per.mean(0) if per.ndim == 3 else per
        lo, hi = mean_interval(per) if per.ndim == 3 else (np.full(values.shape, np.nan),) * 2
        return [ctx.row(self.name, float(v), layer=layer, head=head, baseline=float(self.baseline[layer, head]),
                        lo=float(lo[layer, head]), hi=float(hi[layer, head]))
                for (layer, head), v in np.ndenumerate(values.float().cpu().numpy())]


def _head_score(metric: str, text: str, fn: Callable[[Transformer, EvalSet], torch.Tensor]) -> type[HeadScore]:
    cls = type(f"HeadScore_{metric}", (HeadScore,), {"name": metric, "description": text, "score": staticmethod(fn)})
    return register(cls)


def _prefix(model: Transformer, ev: EvalSet) -> torch.Tensor:
    return masked_pattern_scores(model, ev.repeated, prefix_matching_mask(ev.repeated.shape[1], ev.seg_len, ev.first), per_example=True)


def _duplicate(model: Transformer, ev: EvalSet) -> torch.Tensor:
    return masked_pattern_scores(model, ev.repeated, duplicate_token_mask(ev.repeated.shape[1], ev.seg_len, ev.first), per_example=True)


def _previous(model: Transformer, ev: EvalSet) -> torch.Tensor:
    return masked_pattern_scores(model, ev.tokens[:PREVIOUS_TOKEN_EXAMPLES], previous_token_mask(ev.tokens.shape[1]), per_example=True)


HEAD_SCORES = {
    "prefix_matching": ("attention to the token after an earlier copy of the current one, on repeated random tokens", _prefix),
    "previous_token": ("attention to the previous token, on the evaluation set", _previous),
    "duplicate_token": ("attention to earlier copies of the current token, on repeated random tokens", _duplicate),
    "copying": ("signed rank share of the attended token in what the head writes (docs/analysis.md)",
                lambda model, ev: copying_scores(model, ev.repeated, first=ev.first, per_example=True)),
    "copying_direct": ("the copying score from the token embedding alone (weights only)", lambda model, ev: copying_direct_scores(model)),
    "copying_olsson": ("the paper's 25-token copying recipe",
                       lambda model, ev: copying_olsson_scores(model, ev.random, first=ev.first, per_example=True)),
    "ov_eigen_positivity": ("share of the OV circuit's eigenvalues that are positive (weights only)",
                            lambda model, ev: ov_eigen_positivity(model)),
}
HEAD_METRICS = tuple(HEAD_SCORES)
for _metric, (_text, _fn) in HEAD_SCORES.items():
    _head_score(_metric, _text, _fn)

# What `analyze` measures by default, in order; the viewer and composition are added by analyze.
ANALYSIS = ("loss", "icl_score", "loss_by_position", "per_token_loss", "repeated_passage", *HEAD_METRICS)
