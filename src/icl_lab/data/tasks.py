"""In-context tasks where what is copied is not the literal token (Olsson et al. 2022, Argument 4).

Each task fills a sequence so that some targets are predictable only from the context, by finding
an earlier *source* and reading it through some map other than identity:

- "translation": two alphabets A and B linked by a fixed bijection f (the same in every sequence,
  so the model can learn it in its weights). Segments of A tokens are each followed by their
  translation: `s f(s) s' f(s') ...`. Inside a translation, the next token is f of the token after
  the source of the current one.
- "fuzzy": tokens come in classes of four near-equivalents. Each segment is followed by a fuzzy
  copy whose every token is a *different* member of the original's class: the literal token is
  always wrong, its class is right.
- "pattern": few-shot pattern matching, the paper's "month → animal → colour → fruit" template in
  tokens. Eight categories of tokens; each sequence draws a template of 3-5 categories in a random
  order and fills it cyclically with random members. After the first cycle, the category of the
  next token follows from where the current category appeared before; the token itself does not.
- "mixture": each sequence is one of "repeated" (literal copying, `icl_lab.data.synthetic`),
  "translation", "fuzzy" or "pattern", with equal probability.

`sample_task` returns, next to the tokens, which targets are in-context predictable and, for each
such target, its source positions: where an induction-style head should attend from the query (the
token before the target). Everything is deterministic given the torch generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from icl_lab.errors import DataError

TASKS = ("translation", "fuzzy", "pattern")
FUZZY_CLASS = 4
PATTERN_CATEGORIES = 8
PATTERN_TEMPLATE = (3, 5)  # categories per sequence, inclusive
BIJECTION_SEED = 1729  # fixes the translation alphabet pairing for every run


@dataclass(frozen=True)
class TaskBatch:
    """A batch of task sequences.

    Attributes:
        tokens: [batch, pos] token ids (position 0 is BOS, token 0).
        target_mask: [batch, pos-1] True where the target tokens[:, i+1] is in-context predictable;
            aligned with `Transformer.per_token_loss`.
        sources: [batch, pos-1, pos] True at (query i, key j) where key j is a right source for
            the target tokens[:, i+1] (only on rows where target_mask is True).
    """

    tokens: Tensor
    target_mask: Tensor
    sources: Tensor


def task_problem(d_vocab: int, n_ctx: int, min_period: int) -> str | None:
    """Why the task tokens cannot fit `d_vocab`/`n_ctx`, or None."""
    if d_vocab - 1 < 2 * PATTERN_CATEGORIES:
        return f"d_vocab={d_vocab} is too small for the in-context tasks; use d_vocab >= {2 * PATTERN_CATEGORIES + 1}"
    if n_ctx < 1 + 2 * min_period + 1:
        return f"n_ctx={n_ctx} cannot hold a segment of min_period={min_period} and its copy; raise model.n_ctx"
    return None


def bijection(d_vocab: int) -> tuple[np.ndarray, int]:
    """(f, n): alphabet A is tokens 1..n, B is n+1..2n, and f[a] is a's translation (f[0] = 0)."""
    n = (d_vocab - 1) // 2
    perm = np.random.default_rng(BIJECTION_SEED).permutation(n)
    f = np.zeros(n + 1, dtype=np.int64)
    f[1:] = n + 1 + perm
    return f, n


def _pairs(rng: np.random.Generator, n_ctx: int, lo: int, hi: int, draw, transform) -> tuple[list[int], list[tuple[int, int]]]:
    """A sequence of `segment, transform(segment)` pairs filling n_ctx tokens after BOS, and the
    (target position, source position) links inside each transformed copy."""
    seq, links = [0], []
    while len(seq) < n_ctx:
        length = int(rng.integers(lo, hi + 1))
        seg = draw(length)
        start = len(seq)
        seq += seg.tolist()
        copy_start = len(seq)
        seq += transform(seg).tolist()
        links += [(copy_start + i, start + i) for i in range(1, length)]
    return seq[:n_ctx], [(t, s) for t, s in links if t < n_ctx]


def _translation(rng, d_vocab, n_ctx, lo, hi):
    f, n = bijection(d_vocab)
    return _pairs(rng, n_ctx, lo, hi, lambda k: rng.integers(1, n + 1, k), lambda seg: f[seg])


def _fuzzy(rng, d_vocab, n_ctx, lo, hi):
    n_classes = (d_vocab - 1) // FUZZY_CLASS

    def near(seg):  # a different member of each token's class
        cls, member = (seg - 1) // FUZZY_CLASS, (seg - 1) % FUZZY_CLASS
        shifted = (member + rng.integers(1, FUZZY_CLASS, len(seg))) % FUZZY_CLASS
        return 1 + cls * FUZZY_CLASS + shifted

    return _pairs(rng, n_ctx, lo, hi, lambda k: rng.integers(1, 1 + n_classes * FUZZY_CLASS, k), near)


def _pattern(rng, d_vocab, n_ctx):
    size = min(8, (d_vocab - 1) // PATTERN_CATEGORIES)
    k = int(rng.integers(PATTERN_TEMPLATE[0], PATTERN_TEMPLATE[1] + 1))
    template = rng.choice(PATTERN_CATEGORIES, k, replace=False)
    cats = template[np.arange(n_ctx - 1) % k]
    seq = [0] + (1 + cats * size + rng.integers(0, size, n_ctx - 1)).tolist()
    # item at position t (t >= 1) shares its category with t - k; the query t - 1 finds its
    # category at t - 1 - m*k, so the sources are the items right after: t - m*k, for t - m*k >= 1
    links = [(t, s) for t in range(k + 2, n_ctx) for s in range(t - k, 0, -k) if s - 1 >= 1]
    return seq, links


def _repeated(rng, d_vocab, n_ctx, lo, hi):
    period = int(rng.integers(lo, hi + 1))
    seg = rng.integers(1, d_vocab, period)
    seq = [0] + np.resize(seg, n_ctx - 1).tolist()
    links = [(t, s) for t in range(period + 2, n_ctx) for s in range(t - period, 1, -period)]
    return seq, links


def sample_task(task: str, d_vocab: int, n_ctx: int, batch_size: int, gen: torch.Generator,
                min_period: int = 4, max_period: int = 20) -> TaskBatch:
    """Draw one batch of `task` ("translation", "fuzzy", "pattern", "repeated" or "mixture").

    Raises:
        DataError: an unknown task, or a vocabulary or context too small for it.
    """
    if task not in (*TASKS, "repeated", "mixture"):
        raise DataError(f"unknown task {task!r}; choose one of {', '.join((*TASKS, 'repeated', 'mixture'))}")
    problem = task_problem(d_vocab, n_ctx, min_period)
    if problem:
        raise DataError(problem)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    rng = np.random.default_rng(seed)
    choices = (*TASKS, "repeated") if task == "mixture" else (task,)
    tokens = np.zeros((batch_size, n_ctx), dtype=np.int64)
    sources = np.zeros((batch_size, n_ctx - 1, n_ctx), dtype=bool)
    for b in range(batch_size):
        kind = choices[int(rng.integers(len(choices)))]
        if kind == "pattern":
            seq, links = _pattern(rng, d_vocab, n_ctx)
        else:
            make = {"translation": _translation, "fuzzy": _fuzzy, "repeated": _repeated}[kind]
            seq, links = make(rng, d_vocab, n_ctx, min_period, max_period)
        tokens[b] = seq
        for target, source in links:
            sources[b, target - 1, source] = True
    src = torch.from_numpy(sources)
    return TaskBatch(torch.from_numpy(tokens), src.any(-1), src)
