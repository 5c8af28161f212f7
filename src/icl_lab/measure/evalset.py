"""The evaluation set: the fixed tokens every measurement of a run is computed on.

It depends only on the run's own data (config, tokenizer, BOS) and a fixed seed, never on which
other runs are analysed with it, so `analyze A B` and `analyze B A` measure each run alike; runs
with the same data get the same set. `analyze` stores it in `RUN/analysis/eval_set.safetensors`
with its fingerprint (`icl_lab.pipeline.evalstore`), and `ablate` reads that very file.

    tokens       [example, pos]   evaluation text / synthetic sequences (loss, ICL score, PCA)
    ptl_positions [example]       one per-token-loss index per example (the PCA vectors)
    repeated     [32, pos']       [BOS] + a segment of distinct random tokens repeated 4 times
    random       [32, 26]         [BOS] + 25 distinct random tokens (the paper's copying recipe)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from icl_lab.data.synthetic import sample_batch
from icl_lab.data.text import bos_token, load_tokens, sample_windows
from icl_lab.measure.head_scores import repeated_random_tokens
from icl_lab.run.rundir import Run

EVAL_SEED = 20220308  # fixed: every checkpoint of every run sees the same evaluation tokens
N_REPEATED = 32  # repeated-random-token sequences for prefix matching, duplicate-token and copying
OLSSON_SEQ = 25  # tokens per random sequence of the paper's copying recipe


@dataclass(frozen=True)
class EvalSet:
    tokens: torch.Tensor  # [example, pos]
    ptl_positions: torch.Tensor  # [example]
    repeated: torch.Tensor  # [N_REPEATED, pos']
    seg_len: int
    random: torch.Tensor  # [N_REPEATED, 1 + OLSSON_SEQ] (no BOS column when bos is None)
    bos: int | None

    @property
    def first(self) -> int:
        """The first content column of `repeated` and `random` (1 after a BOS column)."""
        return 0 if self.bos is None else 1

    @property
    def fingerprint(self) -> str:
        """sha256 over every tensor and the segment length: equal fingerprints, equal sets."""
        digest = hashlib.sha256(f"{self.seg_len}:{self.bos}".encode())
        for t in (self.tokens, self.ptl_positions, self.repeated, self.random):
            digest.update(t.to(torch.int64).contiguous().numpy().tobytes())
        return "sha256:" + digest.hexdigest()[:32]


def rare_and_common_tokens(tokens: torch.Tensor, d_vocab: int, fraction: float = 0.1) -> list[int]:
    """The `fraction` most and `fraction` least common token ids in `tokens` (ties broken by id),
    which the paper leaves out of the random sequences."""
    counts = torch.bincount(tokens.flatten(), minlength=d_vocab).float()
    order = torch.argsort(counts + torch.arange(d_vocab) * 1e-6, stable=True)  # rarest first
    k = int(fraction * d_vocab)
    return sorted(set(order[:k].tolist()) | set(order[d_vocab - k :].tolist())) if k else []


def eval_context(run: Run) -> int:
    """Length of the evaluation windows: data.eval_ctx, else the model's context."""
    return min(run.config.data.eval_ctx or run.config.model.n_ctx, run.config.model.n_ctx)


def eval_tokens(run: Run, n_examples: int, gen: torch.Generator) -> tuple[torch.Tensor, int | None]:
    """[example, pos] evaluation sequences and the BOS id they start with: windows of the
    validation split for text runs (with the run's BOS first, as in training), fresh synthetic
    sequences otherwise."""
    cfg = run.config
    n_ctx = eval_context(run)
    if cfg.data.kind == "text":
        ts = load_tokens(cfg.data, cfg.model.d_vocab)
        return sample_windows(ts.val, n_ctx, n_examples, gen, bos=ts.bos).tokens, ts.bos
    return sample_batch(cfg.data, cfg.model.d_vocab, n_ctx, n_examples, gen).tokens, bos_token(cfg.data)


def make_eval_set(run: Run, n_examples: int = 256) -> EvalSet:
    """The evaluation set of `run` (module docstring), from the run's data and EVAL_SEED. The
    random sequences avoid the BOS id and the 10% most and least common tokens of the evaluation
    text, as the paper does."""
    d_vocab = run.config.model.d_vocab
    gen = torch.Generator().manual_seed(EVAL_SEED)
    tokens, bos = eval_tokens(run, n_examples, gen)
    positions = torch.randint(0, tokens.shape[1] - 1, (n_examples,), generator=gen)
    exclude = sorted({0 if bos is None else bos, *rare_and_common_tokens(tokens, d_vocab)})
    repeated, seg_len = repeated_random_tokens(d_vocab, tokens.shape[1], n_examples=N_REPEATED, seed=EVAL_SEED,
                                               exclude=exclude, bos=bos)
    random, _ = repeated_random_tokens(d_vocab, min(tokens.shape[1], 1 + OLSSON_SEQ), seg_len=OLSSON_SEQ, n_repeats=1,
                                       n_examples=N_REPEATED, seed=EVAL_SEED + 1, exclude=exclude, bos=bos)
    return EvalSet(tokens, positions, repeated, seg_len, random, bos)
