"""The data stage: seeded synthetic in-context sequences, and natural text (an offline corpus,
local tokenizers and memory-mapped token arrays).

First in the flow data -> model -> train -> run -> measure."""

from icl_lab.data.config import DataConfig
from icl_lab.data.modular import ModularConfig, ModularStream, ModularTask, build_split
from icl_lab.data.oocr import OOCRConfig, OOCRStream, build_task
from icl_lab.data.corpus import build_corpus, cache_dir
from icl_lab.data.synthetic import Batch, SyntheticStream, sample_batch
from icl_lab.data.text import TextStream, TokenSet, bos_token, load_tokens, repeat_mask, sample_windows
from icl_lab.data.tokenizer import Tokenizer, get_tokenizer


def open_stream(cfg: DataConfig, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> SyntheticStream | TextStream | OOCRStream | ModularStream:
    """The training stream for `cfg`: `TextStream` for text, `OOCRStream` for out-of-context
    reasoning facts, `ModularStream` for modular addition, `SyntheticStream` otherwise."""
    stream = {"text": TextStream, "oocr": OOCRStream, "modular": ModularStream}.get(cfg.kind, SyntheticStream)
    return stream(cfg, d_vocab, n_ctx, batch_size, seed)


__all__ = [
    "Batch", "DataConfig", "ModularConfig", "ModularStream", "ModularTask", "build_split", "bos_token", "OOCRConfig", "OOCRStream", "build_task", "SyntheticStream", "TextStream", "TokenSet", "Tokenizer", "build_corpus", "cache_dir",
    "get_tokenizer", "load_tokens", "open_stream", "repeat_mask", "sample_batch", "sample_windows",
]
