"""Tokenized natural text: each corpus split tokenized once into a memory-mapped uint16/uint32
array with a fingerprint, and a seeded stream of random windows drawn from it.

    CACHE/tokens/CORPUS-TOKENIZER/{train,val}.bin + meta.json  (dtype, token counts, sha256)

A window's `repeat_mask` marks targets that an induction head can predict: the bigram
(previous token, target) already occurred earlier in the window. The training log's
`loss_repeat` on text is the loss on those targets, so induction shows while training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from icl_lab.data.config import DataConfig
from icl_lab.data.corpus import build_corpus, cache_dir, corpus_dir, load_documents, manifest, user_corpus
from icl_lab.data.synthetic import Batch
from icl_lab.data.tokenizer import Tokenizer, get_tokenizer
from icl_lab.errors import DataError
from icl_lab.io import atomic_write, write_json

BUNDLED = ("literary", "technical", "bundled")


@dataclass(frozen=True)
class TokenSet:
    """A tokenized corpus: `train` and `val` are read-only memory-mapped [token] arrays."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    fingerprint: str
    corpus: Path


def resolve_corpus(spec: str, build: bool = True) -> Path:
    """The corpus folder for a `DataConfig.corpus` value: a bundled name (built on first use when
    `build`), a path, or hf:PATH."""
    if spec in BUNDLED:
        path = corpus_dir(spec)
        if (path / "manifest.json").is_file():
            return path
        if not build:
            raise DataError(f"corpus {spec!r} is not built yet; run `icl-lab data build {spec}`")
        return build_corpus(spec)
    return user_corpus(spec)


def _tokenize(out: Path, corpus: Path, tok: Tokenizer) -> None:
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    meta = {"dtype": np.dtype(dtype).name, "tokenizer": tok.fingerprint(), "corpus": manifest(corpus)["fingerprint"]}
    sep = [tok.eot] if tok.eot is not None else tok.encode("\n\n")
    digest = hashlib.sha256()
    for split in ("train", "val"):
        docs = load_documents(corpus, split)
        ids = [i for chunk in range(0, len(docs), 256) for doc in tok.encode_batch(docs[chunk : chunk + 256]) for i in doc + sep]
        arr = np.asarray(ids, dtype=dtype)
        atomic_write(out / f"{split}.bin", lambda p, arr=arr: arr.tofile(p))
        meta[f"{split}_tokens"] = len(arr)
        digest.update(arr.tobytes())
    meta["fingerprint"] = "sha256:" + digest.hexdigest()[:32]
    write_json(out / "meta.json", meta)


def load_tokens(cfg: DataConfig, d_vocab: int, build: bool = True) -> TokenSet:
    """The tokenized corpus of a text `DataConfig` (built, tokenized and cached on first use).

    Raises:
        DataError: the corpus or tokenizer cannot be built, or d_vocab does not fit the tokenizer.
    """
    corpus = resolve_corpus(cfg.corpus, build=build)
    tok = get_tokenizer(cfg.tokenizer, d_vocab, corpus, cfg.tokenizer_file)
    if tok.vocab_size > d_vocab:
        raise DataError(f"tokenizer {cfg.tokenizer} has {tok.vocab_size} tokens but model.d_vocab={d_vocab}; raise d_vocab")
    out = cache_dir() / "tokens" / f"{corpus.name}-{tok.fingerprint().split(':')[1][:16]}"
    if not (out / "meta.json").is_file():
        _tokenize(out, corpus, tok)
    meta = json.loads((out / "meta.json").read_text())
    train, val = (np.memmap(out / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in ("train", "val"))
    return TokenSet(train, val, tok, meta["fingerprint"], corpus)


def repeat_mask(tokens: Tensor) -> Tensor:
    """[batch, pos-1]: True where target tokens[:, i+1] follows tokens[:, i] as it did at some
    earlier j < i in the same window (an induction head's prediction would be right)."""
    cur, nxt = tokens[:, :-1], tokens[:, 1:]  # [batch, pos-1]
    same = (cur[:, :, None] == cur[:, None, :]) & (nxt[:, :, None] == nxt[:, None, :])  # [batch, i, j]
    earlier = torch.ones(same.shape[1], same.shape[2], dtype=torch.bool).tril(-1)
    return (same & earlier).any(-1)


def sample_windows(data: np.ndarray, n_ctx: int, batch_size: int, gen: torch.Generator) -> Batch:
    """`batch_size` random windows of `n_ctx` tokens from `data`."""
    if len(data) <= n_ctx:
        raise DataError(f"the split has {len(data)} tokens, fewer than n_ctx={n_ctx}; give more text or shrink n_ctx")
    starts = torch.randint(0, len(data) - n_ctx, (batch_size,), generator=gen).numpy()
    tokens = torch.from_numpy(np.stack([data[s : s + n_ctx] for s in starts]).astype(np.int64))
    return Batch(tokens=tokens, repeat_mask=repeat_mask(tokens))


class TextStream:
    """An endless, seeded stream of training windows whose position can be saved and restored
    (the same interface as `SyntheticStream`)."""

    def __init__(self, cfg: DataConfig, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> None:
        self.tokens = load_tokens(cfg, d_vocab)
        self.n_ctx, self.batch_size = n_ctx, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        return sample_windows(self.tokens.train, self.n_ctx, self.batch_size, self.generator)

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def fingerprint(self, seed: int) -> str:
        """The token arrays' fingerprint (corpus x tokenizer)."""
        return self.tokens.fingerprint
