"""Tokenized natural text: each corpus split tokenized once into a memory-mapped uint16/uint32
array with a fingerprint, and a seeded stream of random windows drawn from it.

    CACHE/tokens/CORPUS-TOKENIZER/{train,val}.bin + meta.json  (dtype, token counts, sha256)

Every window starts with the run's BOS token (`bos_token`: data.bos_id, else the tokenizer's
end-of-text) unless data.prepend_bos is off, in training and evaluation alike. A window's
`repeat_mask` marks targets that an induction head can predict: the bigram (previous token,
target) already occurred earlier in the window's text. The training log's `loss_repeat` on text
is the loss on those targets, so induction shows while training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from icl_lab.data.config import DataConfig
from icl_lab.data.corpus import build_corpus, cache_dir, corpus_dir, load_documents, manifest, user_corpus
from icl_lab.data.synthetic import Batch
from icl_lab.data.tokenizer import Tokenizer, get_tokenizer
from icl_lab.errors import DataError
from icl_lab.io import atomic_write, write_json

BUNDLED = ("literary", "technical", "bundled", "code", "mix")


@dataclass(frozen=True)
class TokenSet:
    """A tokenized corpus: `train` and `val` are read-only memory-mapped [token] arrays."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    fingerprint: str  # the token arrays' (corpus x tokenizer)
    corpus: Path
    bos: int | None = None  # the id at the start of every window (`bos_token`), or None

    @property
    def data_fingerprint(self) -> str:
        """What a run's meta.json records as its data: the token arrays' fingerprint, and the BOS
        that starts each window (without one, the arrays' fingerprint alone, as before BOS existed)."""
        if self.bos is None:
            return self.fingerprint
        return "sha256:" + hashlib.sha256(f"{self.fingerprint}|bos={self.bos}".encode()).hexdigest()[:32]


def bos_token(cfg: DataConfig, tokenizer: Tokenizer | None = None) -> int | None:
    """The token id that starts every sequence of `cfg`, or None when sequences start with data.

    Text: `cfg.bos_id`, else the tokenizer's end-of-text id (GPT-2's and the local BPE's
    `<|endoftext|>`; byte and char tokenizers have none), and None when `cfg.prepend_bos` is off.
    Synthetic and out-of-context reasoning data: token 0 (for "repeated" and "uniform", only when
    `cfg.bos`). Everything that builds or evaluates sequences asks this function.

    Example:
        >>> bos_token(DataConfig(kind="text", tokenizer="bpe"), tok)  # tok.eot: 0 for a local BPE

    Raises:
        DataError: a text `cfg.bos_id` outside the tokenizer's ids.
    """
    if cfg.kind in ("repeated", "uniform"):
        return 0 if cfg.bos else None
    if cfg.kind != "text":
        return 0  # the in-context tasks and oocr facts always start with token 0
    if not cfg.prepend_bos:
        return None
    if cfg.bos_id is None:
        return tokenizer.eot if tokenizer is not None else None
    if tokenizer is not None and cfg.bos_id >= tokenizer.vocab_size:
        raise DataError(f"data.bos_id={cfg.bos_id} is not a token of the {tokenizer.vocab_size}-token tokenizer; "
                        "set data.bos_id to one of its ids, or to null for its end-of-text")
    return cfg.bos_id


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
    """The tokenized corpus of a text `DataConfig` (built, tokenized and cached on first use),
    with the BOS id its windows start with (`TokenSet.bos`).

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
    fingerprint, train, val = _read_cache(out)
    return TokenSet(train, val, tok, fingerprint, corpus, bos_token(cfg, tok))


_VERIFIED: set[tuple] = set()  # caches whose arrays matched their fingerprint in this process (path, fingerprint, size, mtime, inode)


def _read_cache(out: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The fingerprint and [token] arrays of a token cache, checked against its meta.json: dtype,
    token counts, and (once per process and file version) the sha256 of the arrays.

    Raises:
        DataError: the cache is damaged; the message says to delete it (it is rebuilt on next use).
    """
    fix = f"delete {out} (it is rebuilt on next use)"
    try:
        meta = json.loads((out / "meta.json").read_bytes().decode("utf-8"))
        dtype = np.dtype({"uint16": np.uint16, "uint32": np.uint32}[meta["dtype"]])
        counts = [int(meta[f"{split}_tokens"]) for split in ("train", "val")]
        fingerprint = meta["fingerprint"]
        if not isinstance(fingerprint, str) or min(counts) < 0:
            raise ValueError("bad field")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise DataError(f"token cache {out.name} is damaged (meta.json: {type(e).__name__}); {fix}") from None
    arrays, stamp = [], [str(out), fingerprint]
    for split, count in zip(("train", "val"), counts):
        path = out / f"{split}.bin"
        stat = path.stat() if path.is_file() else None
        if stat is None or stat.st_size != count * dtype.itemsize:
            have = "missing" if stat is None else f"{stat.st_size} bytes"
            raise DataError(f"token cache {out.name} is damaged ({split}.bin is {have}, meta.json says {count} tokens); {fix}")
        arrays.append(np.memmap(path, dtype=dtype, mode="r") if count else np.zeros(0, dtype))
        stamp += [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    if tuple(stamp) not in _VERIFIED:
        digest = hashlib.sha256()
        for arr in arrays:
            digest.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
        if "sha256:" + digest.hexdigest()[:32] != fingerprint:
            raise DataError(f"token cache {out.name} is damaged (its arrays do not match its fingerprint); {fix}")
        _VERIFIED.add(tuple(stamp))
    return fingerprint, arrays[0], arrays[1]


def repeat_mask(tokens: Tensor) -> Tensor:
    """[batch, pos-1]: True where target tokens[:, i+1] follows tokens[:, i] as it did at some
    earlier j < i in the same window (an induction head's prediction would be right)."""
    cur, nxt = tokens[:, :-1], tokens[:, 1:]  # [batch, pos-1]
    same = (cur[:, :, None] == cur[:, None, :]) & (nxt[:, :, None] == nxt[:, None, :])  # [batch, i, j]
    earlier = torch.ones(same.shape[1], same.shape[2], dtype=torch.bool).tril(-1)
    return (same & earlier).any(-1)


BOOST_SPAN = (8, 24)  # length range of each span a boosted window repeats
BOOST_EVERY = 64  # a boosted window repeats one span per this many tokens (4 in a 256-token window)


def boost_windows(text: Int[Tensor, "batch span"], share: float, gen: torch.Generator) -> Int[Tensor, "batch span"]:
    """Repeat spans of natural text later in a `share` of the windows (the `natural-boost-*`
    augmentation): one span per BOOST_EVERY tokens, each 8-24 tokens at a random start copied over
    the tokens at a random later start, so every token is still text from the corpus and the gap
    between the copies varies (no fixed look-back solves it). Other windows, and validation text,
    are left as they are."""
    batch, span = text.shape
    length_hi = min(BOOST_SPAN[1], span // 3)
    if share <= 0 or length_hi < BOOST_SPAN[0]:
        return text
    text = text.clone()
    chosen = (torch.rand(batch, generator=gen) < share).nonzero().flatten().tolist()
    for row in chosen:
        for _ in range(max(1, span // BOOST_EVERY)):
            length = int(torch.randint(BOOST_SPAN[0], length_hi + 1, (1,), generator=gen))
            src = int(torch.randint(0, span - 2 * length + 1, (1,), generator=gen))
            dst = int(torch.randint(src + length, span - length + 1, (1,), generator=gen))
            text[row, dst : dst + length] = text[row, src : src + length]
    return text


def sample_windows(data: np.ndarray, n_ctx: int, batch_size: int, gen: torch.Generator, bos: int | None = None,
                   boost: float = 0.0) -> Batch:
    """`batch_size` random windows of `n_ctx` tokens from `data`.

    Args:
        data: a [token] split, e.g. `load_tokens(cfg, d_vocab).val`.
        bos: the id to put at position 0 of every window, followed by n_ctx - 1 text tokens
            (`TokenSet.bos`, from `bos_token`); None: n_ctx text tokens.
        boost: the share of windows `boost_windows` gives a repeated span (training only).

    Returns:
        A `Batch`: tokens [batch, n_ctx] and repeat_mask [batch, n_ctx - 1]. The prediction of the
        first text token from BOS is an ordinary target but never a repeat, and the BOS column is
        no earlier occurrence for the repeat mask (it is not text).
    """
    span = n_ctx if bos is None else n_ctx - 1  # text tokens per window
    if len(data) <= span:
        raise DataError(f"the split has {len(data)} tokens, fewer than n_ctx={n_ctx}; give more text or shrink n_ctx")
    starts = torch.randint(0, len(data) - span, (batch_size,), generator=gen).numpy()
    text = torch.from_numpy(np.stack([data[s : s + span] for s in starts]).astype(np.int64))  # [batch, span]
    if boost:
        text = boost_windows(text, boost, gen)
    if bos is None:
        return Batch(tokens=text, repeat_mask=repeat_mask(text))
    tokens = torch.cat([torch.full((batch_size, 1), bos, dtype=torch.int64), text], dim=1)  # [batch, n_ctx]
    mask = torch.cat([torch.zeros(batch_size, 1, dtype=torch.bool), repeat_mask(text)], dim=1)  # [batch, n_ctx - 1]
    return Batch(tokens=tokens, repeat_mask=mask)


class TextStream:
    """An endless, seeded stream of training windows whose position can be saved and restored
    (the same interface as `SyntheticStream`)."""

    def __init__(self, cfg: DataConfig, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> None:
        self.tokens = load_tokens(cfg, d_vocab)
        self.boost = cfg.boost
        self.n_ctx, self.batch_size = n_ctx, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        return sample_windows(self.tokens.train, self.n_ctx, self.batch_size, self.generator, bos=self.tokens.bos,
                              boost=self.boost)

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def fingerprint(self, seed: int) -> str:
        """The windows' fingerprint (corpus x tokenizer x BOS): `TokenSet.data_fingerprint`."""
        return self.tokens.data_fingerprint
