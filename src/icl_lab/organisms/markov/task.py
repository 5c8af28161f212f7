"""In-context Markov chains (Edelman et al. 2024, "The evolution of statistical induction heads",
section 2): every sequence is drawn from its own random Markov chain over `n_states` tokens, whose
transition rows come from a symmetric Dirichlet prior, so no chain is seen twice and the best
prediction of the next token is the in-context bigram statistic (the transitions counted so far
out of the current token). Tokens are the states 0..n_states-1; there is no BOS, and every target
is in the loss. `MarkovStream` is a `SeededStream`: one generator draws the chains and the paths."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from pydantic import Field
from torch import Tensor

from icl_lab._config import FrozenConfig
from icl_lab.data.stream import Batch, SeededStream
from icl_lab.errors import DataError

GENERATOR_VERSION = "markov-v1"  # bump when the sampling below changes, to change fingerprints
EVAL_SEED = 20240528  # the evaluation chains: one fixed draw for every checkpoint and run


class MarkovConfig(FrozenConfig):
    """The `data.markov` section of a run of kind "markov".

    Attributes:
        n_states: tokens (and states) 0..n_states-1; the model needs d_vocab >= n_states.
        alpha: concentration of the symmetric Dirichlet prior of every transition row (1 = uniform
            on the simplex, as the paper); also the pseudocount of the unigram and bigram
            strategies (`icl_lab.organisms.markov.measure`), which makes the bigram one Bayes-optimal.
    """

    n_states: int = Field(default=3, ge=2, le=64)
    alpha: float = Field(default=1.0, gt=0)


def task_problem(cfg: MarkovConfig, d_vocab: int, n_ctx: int) -> str | None:
    """Why a model of `d_vocab`/`n_ctx` cannot read chains over `cfg.n_states` states, or None."""
    if d_vocab < cfg.n_states:
        return f"Markov chains over {cfg.n_states} states need d_vocab >= {cfg.n_states}; raise model.d_vocab"
    if n_ctx < 8:
        return "in-context Markov chains need n_ctx >= 8 (a bigram needs transitions to count); raise model.n_ctx"
    return None


def sample_chains(cfg: MarkovConfig, batch: int, n_ctx: int, gen: torch.Generator
                  ) -> tuple[Int[Tensor, "batch pos"], Float[Tensor, "batch state next_state"]]:
    """`batch` sequences, each from its own chain; all randomness from `gen`.

    Returns:
        tokens [batch, pos], and each sequence's transition matrix [batch, state, next_state].
    """
    k = cfg.n_states
    # torch has no seeded Dirichlet: a numpy generator seeded from `gen` draws the rows, so the
    # stream's position is still `gen`'s state alone
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    transitions = torch.from_numpy(rng.dirichlet(np.full(k, cfg.alpha), size=(batch, k))).float()
    uniforms = torch.rand(batch, n_ctx, generator=gen)  # [batch, pos]: one inverse-CDF draw per token
    tokens = torch.empty(batch, n_ctx, dtype=torch.long)
    tokens[:, 0] = (uniforms[:, 0] * k).long().clamp(max=k - 1)  # the first state is uniform
    rows = torch.arange(batch)
    for t in range(1, n_ctx):  # a chain is sequential; the batch is the vector axis
        cdf = transitions[rows, tokens[:, t - 1]].cumsum(-1)  # [batch, next_state]
        tokens[:, t] = (cdf < uniforms[:, t, None]).sum(-1).clamp(max=k - 1)
    return tokens, transitions


def eval_chains(cfg: MarkovConfig, n_ctx: int, n: int = 256) -> Int[Tensor, "n pos"]:
    """The fixed evaluation sequences every checkpoint is measured on."""
    return sample_chains(cfg, n, n_ctx, torch.Generator().manual_seed(EVAL_SEED))[0]


class MarkovStream(SeededStream):
    """Fresh chains at every step; the fingerprint hashes the section and the first batch of the seed.

    Example:
        >>> stream = MarkovStream(DataConfig(kind="markov"), d_vocab=3, n_ctx=64, batch_size=32, seed=0)
        >>> stream.next().tokens.shape   # [32, 64], states 0..2

    Raises:
        DataError: the model cannot hold the task.
    """

    version = GENERATOR_VERSION

    def __init__(self, cfg, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> None:
        problem = task_problem(cfg.markov, d_vocab, n_ctx)
        if problem:
            raise DataError(problem)
        super().__init__(seed)
        self.section, self.n_ctx, self.batch_size = cfg.markov, n_ctx, batch_size

    def next(self) -> Batch:
        tokens, _ = sample_chains(self.section, self.batch_size, self.n_ctx, self.generator)
        # every target follows a state seen in context: all are "repeats" the context informs
        return Batch(tokens=tokens, repeat_mask=torch.ones(self.batch_size, self.n_ctx - 1, dtype=torch.bool))

    def probe(self, seed: int) -> Tensor:
        return sample_chains(self.section, self.batch_size, self.n_ctx, torch.Generator().manual_seed(seed))[0]
