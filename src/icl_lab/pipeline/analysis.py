"""The paper's measurements as measurement objects (`icl_lab.pipeline.base`): the loss and ICL
score, loss by token index, the per-token-loss vectors behind the PCA, and every head score next
to the same score of a randomly initialised model. Each is registered under the metric it writes,
so `icl-lab analyze RUN --only prefix_matching,icl_score` measures just those. The functions they
call live in `icl_lab.measure` and touch no files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from icl_lab.measure.circuits import ov_eigen_positivity
from icl_lab.measure.copying import copying_direct_scores, copying_olsson_scores, copying_statistics, default_sources
from icl_lab.measure.copying_total import copying_total_statistics
from icl_lab.measure.evalset import EVAL_SEED, EvalSet
from icl_lab.measure.head_scores import (
    duplicate_token_mask,
    losses_and_pattern_scores,
    masked_pattern_scores,
    prefix_matching_mask,
    previous_token_mask,
)
from icl_lab.measure.intervals import mean_interval
from icl_lab.measure.losses import dloss_dlnpos, icl_positions, loss_by_token
from icl_lab.measure.memory import forward_row_bytes
from icl_lab.model.config import ModelConfig
from icl_lab.measure.placement import place
from icl_lab.measure.text_signals import passage_losses, repeated_passages
from icl_lab.model.transformer import Transformer
from icl_lab.pipeline.base import PROVIDERS, Context, Measurement, register, shared_at_start
from icl_lab.run.rundir import Run

PREVIOUS_TOKEN_EXAMPLES = 64
PASSAGE_EXAMPLES = 64
BASELINE_TEXT_EXAMPLES = 8  # evaluation windows the random-init baseline is scored on (decision 24)


def _mean_row(ctx: Context, metric: str, per_example: torch.Tensor) -> dict:
    lo, hi = mean_interval(per_example)
    return ctx.row(metric, float(per_example.mean()), lo=float(lo), hi=float(hi))


def _evaluation_pass(ctx: Context, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
    """One forward over the evaluation windows for everything read from them: the per-token losses
    of every window, and the previous-token score of the first PREVIOUS_TOKEN_EXAMPLES windows
    (their patterns reduced as the same pass computes them), whichever was asked for."""
    tokens, n_prev = ctx.ev.tokens, min(PREVIOUS_TOKEN_EXAMPLES, len(ctx.ev.tokens))
    losses, previous = "per_token_losses" in wanted, "previous_token_scores" in wanted
    scores, per_token = losses_and_pattern_scores(ctx.model, tokens if losses else tokens[:n_prev], previous_token_mask(tokens.shape[1]),
                                                  n_prev if previous else 0, ctx.max_bytes, losses=losses)
    return {**({"per_token_losses": per_token.float()} if losses else {}), **({"previous_token_scores": scores} if previous else {})}


PROVIDERS["per_token_losses"] = PROVIDERS["previous_token_scores"] = _evaluation_pass


@register
class Loss(Measurement):
    name, description = "loss", "mean next-token loss on the evaluation set, with a 95% bootstrap interval"
    needs = ("per_token_losses",)

    def measure(self, ctx: Context) -> list[dict]:
        return [_mean_row(ctx, "loss", ctx.need("per_token_losses").mean(1))]


@register
class ICLScore(Measurement):
    name, description = "icl_score", "loss at the late token minus loss at the early token (Olsson et al.), per example, with an interval"
    needs = ("per_token_losses",)

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        self.samples: dict[int, torch.Tensor] = {}  # step -> [example] ICL scores: the phase window's bootstrap

    def measure(self, ctx: Context) -> list[dict]:
        per_token = ctx.need("per_token_losses")
        early, late = icl_positions(ctx.ev.tokens.shape[1])
        self.samples[ctx.step] = per_example = per_token[:, late - 1] - per_token[:, early - 1]
        return [_mean_row(ctx, "icl_score", per_example)]


@register
class LossByPosition(Measurement):
    name, description = "loss_by_position", "mean loss at each token index, and its slope dLoss/d ln(position)"
    needs = ("per_token_losses",)

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
    needs = ("per_token_losses",)

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
        first, second = passage_losses(ctx.model, passages, plen, ctx.ev.first, ctx.max_bytes)
        return [_mean_row(ctx, f"{self.name}.{part}", values)
                for part, values in (("first", first), ("second", second), ("gain", first - second))]


class HeadScore(Measurement):
    """A per-head score, stored with its random-init baseline and (when averaged over examples) a
    95% bootstrap interval. Subclasses define `score(model, ev, max_bytes)`: [example, layer, head]
    or, for weights-only scores, [layer, head]; or a dict of such tensors, whose "" entry is the
    score and whose other entries are stored beside it as `name.key` rows (a null, a margin). The
    baseline model is shared by every head score's `start` and released before the checkpoints load
    (`shared_at_start`); it sees the first BASELINE_TEXT_EXAMPLES evaluation windows (the random
    sequences in full)."""

    score: Callable[[Transformer, EvalSet, int], torch.Tensor | dict[str, torch.Tensor]]

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        key = (run.config.model.model_dump_json(), device, dtype)
        model = shared_at_start(key, lambda: place(Transformer(run.config.model, seed=EVAL_SEED), device, dtype).eval())
        with torch.inference_mode():
            base = _main(self.score(model, replace(ev, tokens=ev.tokens[:BASELINE_TEXT_EXAMPLES]), self.max_bytes))
        self.baseline = base.mean(0) if base.ndim == 3 else base  # [layer, head]
        self.samples: dict[int, torch.Tensor] = {}  # step -> [example, layer, head], kept for prefix matching only

    def floor_bytes(self, cfg: ModelConfig, ev: EvalSet | None, itemsize: int) -> int:
        """One input sequence's forward with one layer's explicit attention (no logits); the
        copying score also holds the residual stream at its source positions, [layer, source, d_model]."""
        if ev is None:
            return 0
        inputs = {"previous_token": ev.tokens}.get(self.name, ev.repeated)
        floor = forward_row_bytes(cfg, inputs.shape[1], itemsize, logits=False, patterns=True)
        if self.name == "copying":
            sources = min(len(inputs) * (inputs.shape[1] - ev.first), max(len(inputs), default_sources(cfg)))
            floor += cfg.n_layers * sources * cfg.d_model * itemsize
        return floor

    def measure(self, ctx: Context) -> list[dict]:
        scores = ctx.need(self.needs[0]) if self.needs else self.score(ctx.model, ctx.ev, ctx.max_bytes)
        parts = scores if isinstance(scores, dict) else {"": scores}
        if self.name == "prefix_matching":  # the phase window's bootstrap resamples its examples
            self.samples[ctx.step] = parts[""]
        rows = []
        for key, per in parts.items():
            values = per.mean(0) if per.ndim == 3 else per
            lo, hi = mean_interval(per) if per.ndim == 3 else (np.full(values.shape, np.nan),) * 2
            metric = f"{self.name}.{key}" if key else self.name
            rows += [ctx.row(metric, float(v), layer=layer, head=head, lo=float(lo[layer, head]), hi=float(hi[layer, head]),
                             **({} if key else {"baseline": float(self.baseline[layer, head])}))
                     for (layer, head), v in np.ndenumerate(values.float().cpu().numpy())]
        return rows


def _main(scores: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    return scores[""] if isinstance(scores, dict) else scores


def _head_score(metric: str, text: str, fn: Callable[[Transformer, EvalSet, int], torch.Tensor]) -> type[HeadScore]:
    # read from a shared pass: the evaluation windows' one forward, and prefix matching (copying_total picks heads by it)
    needs = {"previous_token": ("previous_token_scores",), "prefix_matching": ("prefix_matching_scores",)}.get(metric, ())
    cls = type(f"HeadScore_{metric}", (HeadScore,), {"name": metric, "description": text, "score": staticmethod(fn), "needs": needs})
    return register(cls)


def _prefix(model: Transformer, ev: EvalSet, max_bytes: int) -> torch.Tensor:
    mask = prefix_matching_mask(ev.repeated.shape[1], ev.seg_len, ev.first)
    return masked_pattern_scores(model, ev.repeated, mask, max_bytes, per_example=True)


def _duplicate(model: Transformer, ev: EvalSet, max_bytes: int) -> torch.Tensor:
    mask = duplicate_token_mask(ev.repeated.shape[1], ev.seg_len, ev.first)
    return masked_pattern_scores(model, ev.repeated, mask, max_bytes, per_example=True)


def _copying(model: Transformer, ev: EvalSet, max_bytes: int) -> dict[str, torch.Tensor]:
    stats = copying_statistics(model, ev.repeated, first=ev.first, max_bytes=max_bytes)
    return {"": stats["copying"], "null": stats["null"], "margin": stats["margin"]}


def _previous(model: Transformer, ev: EvalSet, max_bytes: int) -> torch.Tensor:
    tokens = ev.tokens[:PREVIOUS_TOKEN_EXAMPLES]
    return masked_pattern_scores(model, tokens, previous_token_mask(tokens.shape[1]), max_bytes, per_example=True)


HEAD_SCORES = {
    "prefix_matching": ("attention to the token after an earlier copy of the current one, on repeated random tokens", _prefix),
    "previous_token": ("attention to the previous token, on the evaluation set", _previous),
    "duplicate_token": ("attention to earlier copies of the current token, on repeated random tokens", _duplicate),
    "copying": ("signed rank share of the attended token in what the head writes (docs/analysis.md); .null, .margin beside it",
                lambda model, ev, b: _copying(model, ev, b)),
    "copying_direct": ("the copying score from the token embedding alone (weights only)",
                       lambda model, ev, b: copying_direct_scores(model, max_bytes=b)),
    "copying_olsson": ("the paper's 25-token copying recipe",
                       lambda model, ev, b: copying_olsson_scores(model, ev.random, first=ev.first, per_example=True, max_bytes=b)),
    "ov_eigen_positivity": ("share of the OV circuit's eigenvalues that are positive (weights only)",
                            lambda model, ev, b: ov_eigen_positivity(model)),
}
HEAD_METRICS = tuple(HEAD_SCORES)
for _metric, (_text, _fn) in HEAD_SCORES.items():
    _head_score(_metric, _text, _fn)

PROVIDERS["prefix_matching_scores"] = lambda ctx, wanted: {"prefix_matching_scores": _prefix(ctx.model, ctx.ev, ctx.max_bytes)}
COPYING_TOTAL_MIN_PM = 0.3  # heads below this prefix matching cannot pass the rule: copying_total skips them (decision 26)


@register
class CopyingTotal(Measurement):
    """`copying_total` (icl_lab.measure.copying_total) of every head whose prefix matching at this
    checkpoint exceeds COPYING_TOTAL_MIN_PM, with its null and margin beside it; other heads get no
    row (the summary reads NaN)."""

    name, description = "copying_total", "copying through every later layer (path patching), heads with prefix matching > 0.3"
    needs = ("prefix_matching_scores",)

    def measure(self, ctx: Context) -> list[dict]:
        pm = ctx.need("prefix_matching_scores").mean(0)  # [layer, head]
        heads = [(int(l), int(h)) for l, h in (pm > COPYING_TOTAL_MIN_PM).nonzero().tolist()]
        if not heads:
            return []
        ev = ctx.ev
        stats = copying_total_statistics(ctx.model, ev.repeated, ev.seg_len, heads, first=ev.first, max_bytes=ctx.max_bytes)
        rows = []
        for key, metric in (("copying_total", self.name), ("null", f"{self.name}.null"), ("margin", f"{self.name}.margin")):
            lo, hi = mean_interval(stats[key])
            rows += [ctx.row(metric, float(stats[key][:, i].mean()), layer=l, head=h, lo=float(lo[i]), hi=float(hi[i]))
                     for i, (l, h) in enumerate(heads)]
        return rows

    def floor_bytes(self, cfg: ModelConfig, ev: EvalSet | None, itemsize: int) -> int:
        """The residual entering each scored layer and a forward row with patterns, per sequence."""
        if ev is None:
            return 0
        n_pos = ev.repeated.shape[1]
        return 2 * (cfg.n_layers * n_pos * cfg.d_model * itemsize + forward_row_bytes(cfg, n_pos, itemsize, logits=False, patterns=True))


# What `analyze` measures by default, in order; the viewer and composition are added by analyze.
ANALYSIS = ("loss", "icl_score", "loss_by_position", "per_token_loss", "repeated_passage", *HEAD_METRICS, "copying_total")
