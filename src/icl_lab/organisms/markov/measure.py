"""In-context Markov chains, measured: the three strategies a model passes through (Edelman et al.
2024, section 3), how far the model's predictions are from each, the stage that names a
checkpoint, and the statistical-induction-head attention check. Pure functions of a model and
tokens; `icl_lab.organisms.markov.pipeline` applies them at every checkpoint.

- **uniform**: 1/k for every state (what an untrained model predicts).
- **unigram**: the states counted in the context so far, with pseudocount alpha:
  (count(s in x_0..x_t) + alpha) / (t + 1 + k alpha).
- **bigram**: the transitions counted out of the current state:
  (count(x_t -> s in x_0..x_t) + alpha) / (count(x_t -> any) + k alpha), the Bayes-optimal
  prediction under a Dirichlet(alpha) prior on each transition row.

A statistical induction head (section 4) is a second-layer head that, at position t, attends to
the tokens that *followed* earlier copies of the current token x_t (keys j <= t with x_{j-1} = x_t),
reading the bigram counts off those tokens; it is fed by a first-layer previous-token head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.model.transformer import Transformer

STRATEGIES = ("uniform", "unigram", "bigram")


def strategy_probs(tokens: Int[Tensor, "batch pos"], n_states: int, alpha: float = 1.0
                   ) -> dict[str, Float[Tensor, "batch pos state"]]:
    """Each strategy's prediction of the token after every position (position t predicts x_{t+1}
    from x_0..x_t), as probabilities over the `n_states` states."""
    batch, n_pos = tokens.shape
    onehot = F.one_hot(tokens, n_states).float()  # [batch, pos, state]
    seen = onehot.cumsum(1)  # [batch, pos, state]: states counted in x_0..x_t
    t = torch.arange(1, n_pos + 1, dtype=torch.float)[None, :, None]
    unigram = (seen + alpha) / (t + n_states * alpha)
    # transitions x_{j-1} -> x_j for j <= t, as [batch, pos, from_state, to_state], cumulated over pos
    pairs = torch.zeros(batch, n_pos, n_states, n_states)
    pairs[:, 1:] = onehot[:, :-1, :, None] * onehot[:, 1:, None, :]
    counts = pairs.cumsum(1)
    out_of_current = counts[torch.arange(batch)[:, None], torch.arange(n_pos)[None, :], tokens]  # [batch, pos, to_state]
    bigram = (out_of_current + alpha) / (out_of_current.sum(-1, keepdim=True) + n_states * alpha)
    uniform = torch.full_like(unigram, 1.0 / n_states)
    return {"uniform": uniform, "unigram": unigram, "bigram": bigram}


def kl_to_strategies(model_logp: Float[Tensor, "batch pos state"], strategies: dict[str, Tensor],
                     skip: int = 0) -> dict[str, float]:
    """KL(strategy || model) per strategy, in nats, averaged over sequences and the positions from
    `skip` on (the first few positions hold too few counts to tell strategies apart).

    Args:
        model_logp: the model's log-probabilities over the states (renormalised over them).
        strategies: `strategy_probs`'s output.
    """
    out = {}
    for name, probs in strategies.items():
        kl = (probs * (probs.log() - model_logp)).sum(-1)  # [batch, pos]
        out[name] = float(kl[:, skip:].mean())
    return out


@torch.inference_mode()
def model_log_probs(model: Transformer, tokens: Int[Tensor, "batch pos"], n_states: int) -> Float[Tensor, "batch pos state"]:
    """The model's next-token log-probabilities restricted to the states (a vocabulary wider than
    the chain's states is renormalised over them)."""
    return model(tokens)[..., :n_states].float().log_softmax(-1)


def nearest(kls: dict[str, float]) -> str:
    """The stage a checkpoint is in: the strategy its predictions are closest to."""
    return min(STRATEGIES, key=lambda s: kls[s])


def stage_ranges(steps: list[int], stages: list[str]) -> list[dict]:
    """Consecutive checkpoints in one stage as `{stage, start, end}` step ranges, in order."""
    out: list[dict] = []
    for step, stage in zip(steps, stages):
        if out and out[-1]["stage"] == stage:
            out[-1]["end"] = step
        else:
            out.append({"stage": stage, "start": step, "end": step})
    return out


def follower_mask(tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch query_pos key_pos"]:
    """1 where key j <= query t followed an earlier copy of the query's token (x_{j-1} == x_t, j >= 1)."""
    n_pos = tokens.shape[1]
    prev = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], 1)  # [batch, key_pos]: x_{j-1}
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    return ((prev[:, None, :] == tokens[:, :, None]) & causal).float()


def statistical_induction_scores(pattern: Float[Tensor, "batch head query_pos key_pos"], tokens: Int[Tensor, "batch pos"],
                                 ) -> tuple[Float[Tensor, " head"], float]:
    """Each head's attention on the tokens that followed earlier copies of the current token
    (Edelman et al. 2024, section 4), averaged over the queries that have at least one; and the
    score of uniform causal attention on the same tokens (chance: about 1/n_states).

    Returns:
        (score [head], chance): 1 for a head that attends only to such tokens.
    """
    mask = follower_mask(tokens)  # [batch, query_pos, key_pos]
    has = mask.sum(-1) > 0  # [batch, query_pos]
    mass = (pattern * mask[:, None]).sum(-1)  # [batch, head, query_pos]
    score = (mass * has[:, None]).sum((0, 2)) / has.sum()
    n_keys = torch.arange(1, tokens.shape[1] + 1, dtype=torch.float)  # causal keys per query
    chance = float(((mask.sum(-1) / n_keys) * has).sum() / has.sum())
    return score, chance


def previous_token_share(pattern: Float[Tensor, "batch head query_pos key_pos"]) -> Float[Tensor, " head"]:
    """Each head's mean attention from position t to t-1 (t >= 1): the first-layer half of the circuit."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))
