"""Out-of-context reasoning tasks: facts learned in training, recombined at test time.

Entities and relations are single tokens; every task is built deterministically from its config
(`OOCRConfig.task_seed`), so the run seed changes only the initialisation and the data order.
Token 0 is BOS and token 1 is padding; relations follow, then entities.

- **reversal** (after Zhu et al. 2024): pairs `x R y`; a `1 - held_out` share of pairs is also
  trained reversed (`y R~ x`), the rest only forwards. Tested: the untrained direction. Control:
  the fact given in context, `x R y y R~ ?`, which training teaches with random pairs of entities
  (only the final answer is a target, so these never teach a wrong fact).
- **chain** (A->B, B->C => A->C): facts `x 0 y`, `y 0 z`, and the composed `x 1 z` for all chains
  but a held-out share. Variants: **chain-cot** trains `x 1 y z` (the bridge written out), and
  **chain-same** trains `x 0 y y 0 z x 1 z` (both facts in one sequence; held-out chains are
  trained as `x 0 y y 0 z`), tested with the facts in context and without.
- **two-hop** (after Wang et al. 2024): every entity has `n_relations` atomic facts `e r -> e'`;
  two-hop queries `e r1 r2 -> r2(r1(e))`. A share `ood` of entities forms a closed group whose
  facts point inside it and are never composed in training: queries from them are the OOD split.
  Of the other (ID) compositions, `phi` times as many as there are ID atomic facts are trained;
  the held-out rest whose atomic facts both appear in trained compositions are the ID split."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from icl_lab._config import FrozenConfig
from icl_lab.data.stream import Batch, SeededStream
from icl_lab.errors import DataError

BOS, PAD = 0, 1
GENERATOR_VERSION = "oocr-v1"
OOCRTaskName = Literal["reversal", "chain", "chain-cot", "chain-same", "two-hop"]
MAX_EVAL = 1000  # examples per evaluation split


class OOCRConfig(FrozenConfig):
    """An out-of-context reasoning task: the `data.oocr` section of a run of kind "oocr".

    Attributes:
        task: reversal, chain, chain-cot, chain-same or two-hop.
        n_items: pairs (reversal), chains (chain*) or entities (two-hop).
        held_out: share of pairs trained in one direction only (reversal) or of chains whose
            composed fact is never trained (chain*).
        n_relations: two-hop: relations, each defined on every entity.
        phi: two-hop: trained inferred facts per ID atomic fact (at most n_relations).
        ood: two-hop: share of entities in the never-composed (OOD) group.
        context_share: reversal: share of training sequences that are in-context examples.
        task_seed: builds the facts and splits.
    """

    task: OOCRTaskName = "reversal"
    n_items: int = Field(default=200, ge=10)
    held_out: float = Field(default=0.3, gt=0, lt=1)
    n_relations: int = Field(default=20, ge=2)
    phi: float = Field(default=12.0, gt=0)
    ood: float = Field(default=0.05, gt=0, lt=0.5)
    context_share: float = Field(default=0.2, ge=0, lt=1)
    task_seed: int = 0


@dataclass
class OOCRTask:
    """A built task.

    Attributes:
        d_vocab, n_ctx: the vocabulary and sequence length the model needs at least.
        train: [n, n_ctx] training sequences (padded) and `train_mask` [n, n_ctx - 1], True where
            the target (the next token) is an answer, aligned with `Transformer.per_token_loss`.
        context_pool: reversal: entity ids for freshly drawn in-context examples (else empty).
        splits: split name -> (prompts [n, p], answers [n, a]): greedy decoding of `a` tokens
            after the prompt is correct when its last token equals the answer's last token.
        bridges: split name -> [n] the bridge entity of each query (chain*/two-hop), for the
            logit lens and hop patching.
        chance: accuracy of a uniform guess among the entities that can answer.
        entities: the entity token range [lo, hi).
        relation: two-hop: [entity token, relation token] -> entity token of the atomic fact
            (-1 elsewhere), to know what a query with a swapped bridge should answer.
    """

    d_vocab: int
    n_ctx: int
    train: Tensor
    train_mask: Tensor
    context_pool: np.ndarray
    splits: dict[str, tuple[Tensor, Tensor]]
    bridges: dict[str, Tensor] = field(default_factory=dict)
    chance: float = 0.0
    entities: tuple[int, int] = (0, 0)
    relation: Tensor | None = None


def token_label(task: OOCRTask, token: int) -> str:
    """A readable name: BOS, · (padding), e<n> for entity n, r<n> for relation n."""
    lo, hi = task.entities
    return {BOS: "BOS", PAD: "·"}.get(token, f"e{token - lo}" if lo <= token < hi else f"r{token - 2}")


def _pack(rows: list[list[int]], masks: list[list[bool]], n_ctx: int) -> tuple[Tensor, Tensor]:
    tokens = torch.full((len(rows), n_ctx), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), n_ctx - 1), dtype=torch.bool)
    for i, (row, m) in enumerate(zip(rows, masks)):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(m) - 1] = torch.tensor(m[1:])  # target j+1 -> per-token index j
    return tokens, mask


def _split(prompts: list[list[int]], answers: list[list[int]], rng: np.random.Generator,
           bridges: list[int] | None = None) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """At most MAX_EVAL (prompt, answer) pairs, sampled; with `bridges`, their bridges too."""
    idx = rng.permutation(len(prompts))[:MAX_EVAL] if len(prompts) > MAX_EVAL else np.arange(len(prompts))
    out = torch.tensor([prompts[i] for i in idx]), torch.tensor([answers[i] for i in idx])
    return out if bridges is None else (*out, torch.tensor([bridges[i] for i in idx]))


def _fact(prompt: list[int], answer: list[int]) -> tuple[list[int], list[bool]]:
    row = [BOS, *prompt, *answer]
    return row, [False] * (1 + len(prompt)) + [True] * len(answer)


def _reversal(c: OOCRConfig, rng: np.random.Generator) -> OOCRTask:
    R, RINV, first = 2, 3, 4
    P = c.n_items
    xs, ys = list(range(first, first + P)), list(range(first + P, first + 2 * P))
    pool = np.arange(first, first + 2 * P)  # in-context examples pair random entities: copying must work for every entity
    order = rng.permutation(P)
    both, one_way = order[: int(round((1 - c.held_out) * P))], order[int(round((1 - c.held_out) * P)) :]
    facts = [_fact([x, R], [y]) for x, y in zip(xs, ys)] + [_fact([ys[i], RINV], [xs[i]]) for i in both]
    train, mask = _pack([f[0] for f in facts], [f[1] for f in facts], 8)
    splits = {
        "trained": _split([[BOS, x, R] for x in xs], [[y] for y in ys], rng),
        "trained_reverse": _split([[BOS, ys[i], RINV] for i in both], [[xs[i]] for i in both], rng),
        "held_out": _split([[BOS, ys[i], RINV] for i in one_way], [[xs[i]] for i in one_way], rng),
        "in_context": _split([[BOS, xs[i], R, ys[i], ys[i], RINV] for i in one_way], [[xs[i]] for i in one_way], rng),
    }
    return OOCRTask(first + 2 * P, 8, train, mask, pool, splits, chance=1 / P, entities=(first, first + 2 * P))


def _chain(c: OOCRConfig, rng: np.random.Generator) -> OOCRTask:
    HOP, COMPOSED, first = 2, 3, 4
    C = c.n_items
    xs, ys, zs = (list(range(first + k * C, first + (k + 1) * C)) for k in range(3))
    order = rng.permutation(C)
    n_train = int(round((1 - c.held_out) * C))
    seen, held = order[:n_train], order[n_train:]
    facts = [_fact([xs[i], HOP], [ys[i]]) for i in range(C)] + [_fact([ys[i], HOP], [zs[i]]) for i in range(C)]
    n_ctx = 10 if c.task == "chain-same" else 5

    def query(i):  # (prompt, answer) of chain i's composed fact in this variant's format
        if c.task == "chain-cot":
            return [BOS, xs[i], COMPOSED], [ys[i], zs[i]]
        if c.task == "chain-same":
            return [BOS, xs[i], HOP, ys[i], ys[i], HOP, zs[i], xs[i], COMPOSED], [zs[i]]
        return [BOS, xs[i], COMPOSED], [zs[i]]

    for i in seen:
        prompt, answer = query(i)
        row = [*prompt, *answer]
        if c.task == "chain-same":  # both facts' answers and the composed answer are targets
            facts.append((row, [t in (3, 6, 9) for t in range(len(row))]))
        else:
            facts.append((row, [t >= len(prompt) for t in range(len(row))]))
    if c.task == "chain-same":  # held-out chains' facts co-occur in a sequence too, without the composition
        facts += [([BOS, xs[i], HOP, ys[i], ys[i], HOP, zs[i]], [t in (3, 6) for t in range(7)]) for i in held]
    train, mask = _pack([f[0] for f in facts], [f[1] for f in facts], n_ctx)
    atoms = [([BOS, xs[i], HOP], [ys[i]]) for i in range(C)] + [([BOS, ys[i], HOP], [zs[i]]) for i in range(C)]
    splits = {"atomic": _split([a[0] for a in atoms], [a[1] for a in atoms], rng)}
    bridges = {}
    for name, chains in (("trained", seen), ("held_out", held)):
        qs = [query(i) for i in chains]
        prompts, answers, bridges[name] = _split([q[0] for q in qs], [q[1] for q in qs], rng, [ys[i] for i in chains])
        splits[name] = (prompts, answers)
    if c.task == "chain-same":
        splits["held_out_no_context"] = _split([[BOS, xs[i], COMPOSED] for i in held], [[zs[i]] for i in held], rng)
    return OOCRTask(first + 3 * C, n_ctx, train, mask, np.empty(0, dtype=np.int64), splits, bridges, 1 / C, (first, first + 3 * C))


def _two_hop(c: OOCRConfig, rng: np.random.Generator) -> OOCRTask:
    K, N = c.n_relations, c.n_items
    first = 2 + K
    ents = rng.permutation(N)
    n_ood = max(2, int(round(c.ood * N)))
    groups = [ents[:n_ood], ents[n_ood:]]  # OOD, ID
    target = np.zeros((N, K), dtype=np.int64)  # target[e, r]: entity index of r(e)
    for group in groups:
        target[group] = rng.choice(group, size=(len(group), K))
    ent = lambda i: first + int(i)  # noqa: E731
    atoms = [_fact([ent(e), 2 + r], [ent(target[e, r])]) for e in range(N) for r in range(K)]
    ood, idg = groups
    comps = [(e, r1, r2) for e in idg for r1 in range(K) for r2 in range(K)]
    n_train = min(int(round(c.phi * len(idg) * K)), len(comps) - 1)
    pick = rng.permutation(len(comps))
    trained = [comps[i] for i in pick[:n_train]]
    used = {(e, r1) for e, r1, _ in trained} | {(int(target[e, r1]), r2) for e, r1, r2 in trained}
    test_id = [comps[i] for i in pick[n_train:]
               if (comps[i][0], comps[i][1]) in used and (int(target[comps[i][0], comps[i][1]]), comps[i][2]) in used]
    test_ood = [(e, r1, r2) for e in ood for r1 in range(K) for r2 in range(K)]

    def query(e, r1, r2):
        return [BOS, ent(e), 2 + r1, 2 + r2], [ent(target[target[e, r1], r2])]

    rows = atoms + [_fact(prompt[1:], answer) for prompt, answer in (query(*t) for t in trained)]
    train, mask = _pack([r[0] for r in rows], [r[1] for r in rows], 5)
    splits, bridges = {}, {}
    sub = rng.permutation(N * K)[:MAX_EVAL]
    flat = [(e, r) for e in range(N) for r in range(K)]
    splits["atomic"] = (torch.tensor([[BOS, ent(flat[i][0]), 2 + flat[i][1]] for i in sub]),
                        torch.tensor([[ent(target[flat[i]])] for i in sub]))
    for name, items in (("trained", trained), ("id", test_id), ("ood", test_ood)):
        items = [items[i] for i in rng.permutation(len(items))[:MAX_EVAL]]
        qs = [query(*t) for t in items]
        splits[name] = (torch.tensor([q[0] for q in qs]), torch.tensor([q[1] for q in qs]))
        bridges[name] = torch.tensor([ent(target[e, r1]) for e, r1, _ in items])
    relation = torch.full((first + N, first), -1, dtype=torch.long)
    relation[first:, 2:] = torch.from_numpy(target) + first
    return OOCRTask(first + N, 5, train, mask, np.empty(0, dtype=np.int64), splits, bridges, 1 / N, (first, first + N), relation)


@lru_cache(maxsize=8)
def build_task(c: OOCRConfig) -> OOCRTask:
    """The task `c` describes (cached: every call with an equal config returns the same object)."""
    rng = np.random.default_rng(c.task_seed)
    if c.task == "reversal":
        return _reversal(c, rng)
    if c.task == "two-hop":
        if c.phi > c.n_relations:
            raise DataError(f"phi={c.phi} exceeds n_relations={c.n_relations}, the most inferred facts per atomic fact; lower phi")
        return _two_hop(c, rng)
    return _chain(c, rng)


def task_problem(c: OOCRConfig, d_vocab: int, n_ctx: int) -> str | None:
    """Why a model of `d_vocab`/`n_ctx` cannot hold task `c`, or None."""
    t = build_task(c)
    if d_vocab < t.d_vocab:
        return f"the {c.task} task needs d_vocab >= {t.d_vocab}; raise model.d_vocab"
    if n_ctx < t.n_ctx:
        return f"the {c.task} task needs n_ctx >= {t.n_ctx}; raise model.n_ctx"
    return None


def _in_context(pool: np.ndarray, n: int, n_ctx: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Fresh reversal-in-context examples `a R b b R~ a` from `pool`; the last `a` is the target."""
    idx = torch.randint(0, len(pool), (n, 2), generator=gen)
    idx[:, 1] = (idx[:, 0] + 1 + torch.randint(0, len(pool) - 1, (n,), generator=gen)) % len(pool)
    a, b = torch.from_numpy(pool)[idx[:, 0]], torch.from_numpy(pool)[idx[:, 1]]
    tokens = torch.full((n, n_ctx), PAD, dtype=torch.long)
    tokens[:, :7] = torch.stack([torch.full_like(a, BOS), a, torch.full_like(a, 2), b, b, torch.full_like(a, 3), a], 1)
    mask = torch.zeros((n, n_ctx - 1), dtype=torch.bool)
    mask[:, 5] = True  # target 6: the reversed answer
    return tokens, mask


class OOCRStream(SeededStream):
    """An endless, seeded stream of training sequences drawn uniformly (with replacement) from the
    task's training set, plus fresh in-context examples for reversal. `Batch.loss_mask` restricts
    the loss to answer tokens; the fingerprint hashes the task section and its training set."""

    version = GENERATOR_VERSION

    def __init__(self, cfg, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> None:
        problem = task_problem(cfg.oocr, d_vocab, n_ctx)
        if problem:
            raise DataError(problem)
        super().__init__(seed)
        self.task = build_task(cfg.oocr)
        self.section, self.n_ctx, self.batch_size = cfg.oocr, n_ctx, batch_size

    def next(self) -> Batch:
        n_context = int(self.section.context_share * self.batch_size) if len(self.task.context_pool) else 0
        idx = torch.randint(0, len(self.task.train), (self.batch_size - n_context,), generator=self.generator)
        tokens, mask = self.task.train[idx], self.task.train_mask[idx]
        pad = self.n_ctx - tokens.shape[1]
        tokens = torch.nn.functional.pad(tokens, (0, pad), value=PAD)
        mask = torch.nn.functional.pad(mask, (0, pad))
        if n_context:
            ctx_tokens, ctx_mask = _in_context(self.task.context_pool, n_context, self.n_ctx, self.generator)
            tokens, mask = torch.cat([tokens, ctx_tokens]), torch.cat([mask, ctx_mask])
        return Batch(tokens=tokens, repeat_mask=mask, loss_mask=mask)

    def probe(self, seed: int) -> Tensor:
        return self.task.train
