"""A tiny GGUF file for the import and load tests: one Llama block with SmolLM2's tokenizer layout."""

import numpy as np
import pytest

TOKEN_HI = 257  # "hi": after <|endoftext|> and the 256 byte tokens


def write_gguf(path):
    """A one-block Llama GGUF file with SmolLM2's tokenizer layout (byte-level BPE, BOS 0)."""
    gguf = pytest.importorskip("gguf")
    from tokenizers.pre_tokenizers import ByteLevel

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in (("block_count", 1), ("context_length", 32), ("embedding_length", 32), ("feed_forward_length", 48),
                       ("head_count", 2), ("head_count_kv", 2), ("rope_dimension_count", 16)):
        getattr(w, f"add_{add}")(value)
    tokens = ["<|endoftext|>", *ByteLevel.alphabet(), "hi"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(["h i"])
    w.add_bos_token_id(0)
    shapes = {"token_embd.weight": (300, 32), "output_norm.weight": (32,), "output.weight": (300, 32)}
    for name, shape in (("attn_norm", (32,)), ("ffn_norm", (32,)), ("attn_q", (32, 32)), ("attn_k", (32, 32)),
                        ("attn_v", (32, 32)), ("attn_output", (32, 32)), ("ffn_gate", (48, 32)), ("ffn_up", (48, 32)),
                        ("ffn_down", (32, 48))):
        shapes[f"blk.0.{name}.weight"] = shape
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
