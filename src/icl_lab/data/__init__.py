"""The data stage: seeded synthetic in-context sequences, and natural text (an offline corpus,
local tokenizers and memory-mapped token arrays). A model organism's task stream comes from its
own package, found by data kind (`icl_lab.kinds`).

First in the flow data -> model -> train -> run -> measure."""

from icl_lab.data.config import CORE_KINDS, DataConfig
from icl_lab.data.corpus import build_corpus, cache_dir
from icl_lab.data.stream import Batch, SeededStream
from icl_lab.data.synthetic import SyntheticStream, sample_batch
from icl_lab.data.text import TextStream, TokenSet, bos_token, load_tokens, repeat_mask, sample_windows
from icl_lab.data.tokenizer import Tokenizer, get_tokenizer
from icl_lab.kinds import organism


def open_stream(cfg: DataConfig, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> SeededStream | TextStream:
    """The training stream for `cfg`: `TextStream` for text, the organism's stream for an
    organism's kind (`icl_lab.kinds.Organism.stream`), `SyntheticStream` otherwise."""
    org = organism(cfg.kind)
    if org is not None:
        return org.stream(cfg, d_vocab, n_ctx, batch_size, seed)
    stream = TextStream if cfg.kind == "text" else SyntheticStream
    return stream(cfg, d_vocab, n_ctx, batch_size, seed)


__all__ = [
    "Batch", "CORE_KINDS", "DataConfig", "SeededStream", "SyntheticStream", "TextStream", "TokenSet", "Tokenizer", "bos_token",
    "build_corpus", "cache_dir", "get_tokenizer", "load_tokens", "open_stream", "repeat_mask", "sample_batch", "sample_windows",
]
