"""Read a llama.cpp GGUF file (Llama architecture) as a Hugging Face-style config and state
dict, so the Llama importer converts it like a Hugging Face folder; plus its byte-level BPE
tokenizer, rebuilt with HF `tokenizers` from the vocabulary and merges in the file's metadata.

Quantised tensors (Q4_1, Q8_0, ...) are dequantised with the `gguf` package. llama.cpp's
converter permutes the rows of W_Q and W_K for its rotary layout (pairs of adjacent dimensions);
`_unpermute` undoes it, back to the rotate-half layout that Hugging Face and icl-lab use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from icl_lab.errors import CheckpointError, ConfigError

NAMES = {  # GGUF tensor name (per block after "blk.{i}.") -> Hugging Face Llama name
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: [n_heads * d_head, d_model] rows back to rotate-half order."""
    out_dim = w.shape[0]
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return field.contents() if field is not None else default


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise ConfigError("reading GGUF files needs the `gguf` package; pip install 'icl-lab[gguf]'") from None
    try:
        return gguf, gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file ({str(e).splitlines()[0][:100]})") from None


def read_gguf(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(Hugging Face-style Llama config, state dict in HF names and [out, in] orientation).

    Raises:
        ConfigError: an architecture other than llama, or the gguf package missing.
        CheckpointError: an unreadable file or a tensor type the gguf package cannot dequantise.
    """
    gguf, reader = _reader(Path(path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ConfigError(f"GGUF architecture {arch!r} cannot be imported yet; only llama")
    n_heads, n_kv = _field(reader, "llama.attention.head_count"), _field(reader, "llama.attention.head_count_kv")
    weights: dict[str, Tensor] = {}
    for t in reader.tensors:
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # numpy order: [out, in]
        except (NotImplementedError, gguf.quants.QuantError) as e:
            raise CheckpointError(f"cannot dequantise {t.name} ({t.tensor_type.name}: {e})") from None
        name = t.name
        if name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            if rest in ("attn_q.weight", "attn_k.weight"):
                w = _unpermute(w, n_heads if rest == "attn_q.weight" else n_kv)
            name = f"model.layers.{i}.{NAMES[rest]}"
        else:
            name = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                    "output.weight": "lm_head.weight"}[name]
        weights[name] = torch.from_numpy(np.ascontiguousarray(w))
    d_model = _field(reader, "llama.embedding_length")
    config = {
        "model_type": "llama", "hidden_size": d_model, "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
        "num_hidden_layers": _field(reader, "llama.block_count"), "intermediate_size": _field(reader, "llama.feed_forward_length"),
        "vocab_size": weights["model.embed_tokens.weight"].shape[0], "max_position_embeddings": _field(reader, "llama.context_length"),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "head_dim": _field(reader, "llama.rope.dimension_count", d_model // n_heads), "hidden_act": "silu",
        "name": _field(reader, "general.name", Path(path).stem), "license": _field(reader, "general.license"),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
    }
    return config, weights


def gguf_tokenizer_json(path: str | Path) -> str | None:
    """The file's byte-level BPE tokenizer as HF `tokenizers` JSON, or None if it has another kind."""
    _, reader = _reader(Path(path))
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        return None
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM2's pre-tokenizer ("smollm" in llama.cpp): digits one by one, then GPT-2's byte-level split
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    types = _field(reader, "tokenizer.ggml.token_type", [])
    tok.add_special_tokens([t for t, kind in zip(tokens, types) if kind == 3])  # 3 = control tokens
    return tok.to_str()
