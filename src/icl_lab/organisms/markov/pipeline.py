"""In-context Markov chains measured over a run, as a measurement object: at every checkpoint the
KL of the model's predictions to the uniform, unigram and bigram strategies (`markov.kl.{strategy}`),
the loss, the stage (the nearest strategy, `markov.stage` as its index in `STRATEGIES`), and every
head's statistical-induction and previous-token attention (`markov.sih.L{l}H{h}`,
`markov.prev.L{l}H{h}`); `save` writes the stages as step ranges to `analysis/markov.json`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from icl_lab.io import write_json
from icl_lab.kinds import organism
from icl_lab.measure.evalset import EvalSet
from icl_lab.measure.head_scores import attention_patterns
from icl_lab.organisms.markov.measure import (
    STRATEGIES,
    kl_to_strategies,
    model_log_probs,
    nearest,
    previous_token_share,
    stage_ranges,
    statistical_induction_scores,
    strategy_probs,
)
from icl_lab.organisms.markov.results import PREFIX, summary_path
from icl_lab.organisms.markov.task import MarkovConfig, eval_chains
from icl_lab.pipeline.base import Context, Measurement, Progress, register, store_rows, walk
from icl_lab.pipeline.views import AttentionViewer
from icl_lab.run.results import is_fresh
from icl_lab.run.rundir import Run

SKIP = 8  # positions left out of the KLs: before ~8 tokens the three strategies barely differ
SIH_LAYER = 1  # the statistical induction head sits in the second layer


def viewer_samples(run: Run) -> tuple[torch.Tensor, list[dict]]:
    """Two evaluation chains for the attention viewer, tokens labelled by state."""
    tokens = eval_chains(run.config.data.markov, run.config.model.n_ctx)[:2, :64]
    return tokens, [{"name": f"Markov chain {i}", "tokens": [str(t) for t in row]} for i, row in enumerate(tokens.tolist())]


@register
class MarkovStages(Measurement):
    """The strategy KLs, the stage and the heads' attention scores at every checkpoint."""

    fans_out = False  # `save` writes the stage ranges from what `measure` collected across checkpoints
    name, description = "markov", "KL to the uniform/unigram/bigram strategies, the stage, statistical induction heads (markov runs)"
    needs_eval_set = False

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        self.cfg: MarkovConfig = organism("markov").section_of(run)
        self.tokens = eval_chains(self.cfg, run.config.model.n_ctx)
        self.strategies = strategy_probs(self.tokens, self.cfg.n_states, self.cfg.alpha)
        self.history: dict[int, dict] = {}

    def measure(self, ctx: Context) -> list[dict]:
        tokens = self.tokens.to(next(ctx.model.parameters()).device)
        logp = model_log_probs(ctx.model, tokens, self.cfg.n_states).cpu()  # [batch, pos, state]
        kls = kl_to_strategies(logp, self.strategies, skip=SKIP)
        loss = float(-logp[:, :-1].gather(-1, self.tokens[:, 1:, None]).mean())
        patterns = attention_patterns(ctx.model, tokens).float().cpu()  # [layer, batch, head, query_pos, key_pos]
        sih, chance = statistical_induction_scores(patterns[min(SIH_LAYER, len(patterns) - 1)], self.tokens)
        prev = previous_token_share(patterns[0])
        stage = nearest(kls)
        self.history[ctx.step] = {"kl": kls, "stage": stage, "loss": loss, "sih": sih.tolist(), "prev": prev.tolist(),
                                  "chance": chance}
        rows = [ctx.row(f"{PREFIX}kl.{s}", v) for s, v in kls.items()]
        rows += [ctx.row(f"{PREFIX}loss", loss), ctx.row(f"{PREFIX}stage", float(STRATEGIES.index(stage)))]
        layer = min(SIH_LAYER, len(patterns) - 1)
        rows += [ctx.row(f"{PREFIX}sih.L{layer}H{h}", float(v)) for h, v in enumerate(sih)]
        rows += [ctx.row(f"{PREFIX}prev.L0H{h}", float(v)) for h, v in enumerate(prev)]
        return rows

    def save(self, run: Run) -> None:
        write_json(summary_path(run), summarise(run, self.history))


def summarise(run: Run, history: dict[int, dict]) -> dict:
    """The run's `analysis/markov.json`: the stages as step ranges, their order, and the final
    checkpoint's KLs and head scores."""
    steps = sorted(history)
    ranges = stage_ranges(steps, [history[s]["stage"] for s in steps])
    order = [r["stage"] for r in ranges]
    final = history[steps[-1]]
    best = max(range(len(final["sih"])), key=lambda h: final["sih"][h])
    return {
        "run": str(run.path), "seed": run.config.seed, "n_states": run.config.data.markov.n_states, "step": steps[-1],
        "stages": ranges, "order": order, "reaches_bigram": order[-1] == "bigram",
        "in_order": order == [s for s in STRATEGIES if s in order],  # never back to an earlier strategy
        "final": {"kl": final["kl"], "loss": final["loss"], "stage": final["stage"]},
        "sih": {"layer": min(SIH_LAYER, run.config.model.n_layers - 1), "head": best, "score": final["sih"][best],
                "scores": final["sih"], "chance": final["chance"]},
        "prev": {"layer": 0, "scores": final["prev"]},
    }


def evaluate_run(run: Run, progress: Progress | None = None, steps: Sequence[int] | None = None) -> dict:
    """Measure every checkpoint of a Markov-chain run, replace its `markov.` rows, write
    `analysis/markov.json` and store the attention viewer (two evaluation chains) for the report.

    Returns:
        The summary (see `summarise`).

    Raises:
        ConfigError: not a Markov-chain run, or it has no checkpoint.
    """
    organism("markov").section_of(run)
    m, viewer = MarkovStages(), AttentionViewer()
    table = walk(run, [m, viewer], progress=progress, steps=steps)
    store_rows(run, [m, viewer], table)
    m.save(run)
    viewer.save(run)
    return summarise(run, m.history)


def is_evaluated(run: Run) -> bool:
    """Whether `evaluate_run` has run since the run's last checkpoint."""
    return is_fresh(run, summary_path(run))
