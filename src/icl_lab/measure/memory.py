"""The memory contract: how many bytes each measurement may hold at once, as formulas in the
model's and evaluation set's sizes, and the chunk sizes chosen from them (docs/pipeline.md,
"Memory contract").

Every measurement streams its inputs: it holds at most `max_bytes` of intermediates at a time
(the *working budget*), or one sequence's worth when a single sequence needs more (the *floor*,
e.g. one 512-token window's logits over a 49k vocabulary). A chunk is the largest number of
sequences whose `row_bytes` fit the budget. What a measurement holds on top of that (the model,
the evaluation tokens, Python) is the *resident* part that `icl_lab.pipeline.memory` adds up
before any work starts, so a run that cannot fit is refused in one line instead of being killed.

The row formulas are upper bounds of what PyTorch allocates, checked against the peak RSS each
measurement reaches (`tests/pipeline/test_memory.py`)."""

from __future__ import annotations

import re

from icl_lab.errors import ConfigError
from icl_lab.model.config import ModelConfig

MiB, GiB = 2**20, 2**30
DEFAULT_MAX_BYTES = 256 * MiB  # one measurement's working budget: larger chunks run no faster on a CPU
FLOAT = 4  # scores, patterns and losses are computed in float32 at least


def parse_size(text: str | int | float) -> int:
    """Bytes from "4GB", "512MiB", "2.5G", "800M" or a number of bytes (GB and GiB both mean 2^30).

    Raises:
        ConfigError: an unreadable size.
    """
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ConfigError(f"cannot read the size {text!r}; write it like 4GB, 512MB or 2.5G")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * 1024**power)


def format_size(n: int | float) -> str:
    """"3.6 GB" (2^30 bytes a GB, as `parse_size` reads it)."""
    return f"{n / GiB:.1f} GB" if n >= GiB / 10 else f"{n / MiB:.0f} MB"


def rows_per_chunk(row_bytes: int, max_bytes: int, total: int) -> int:
    """How many sequences of `row_bytes` each fit `max_bytes` (at least 1, at most `total`)."""
    return max(1, min(total, max_bytes // max(1, row_bytes)))


def stream_bytes(cfg: ModelConfig, n_pos: int, itemsize: int) -> int:
    """What one sequence's forward holds inside a block, fused attention: the residual, the
    norm's output, q/k/v (rotated copies too), z, the attention output and the MLP's hidden
    activations (gate, linear part and product for a gated MLP)."""
    hidden = 3 * cfg.d_mlp if cfg.gated_mlp else 2 * cfg.d_mlp
    return n_pos * itemsize * (4 * cfg.d_model + 6 * cfg.n_heads * cfg.d_head + hidden)


def pattern_bytes(cfg: ModelConfig, n_pos: int, itemsize: int) -> int:
    """One layer's explicit attention for one sequence: scores, masked scores, pattern and the
    product a hook reduces it with, [head, query_pos, key_pos] each."""
    return 4 * cfg.n_heads * n_pos * n_pos * max(itemsize, FLOAT)


def logits_bytes(cfg: ModelConfig, n_pos: int, itemsize: int) -> int:
    """One sequence's logits in the model's dtype, their float copy and the log-softmax the
    cross-entropy forms."""
    loss = 8 if cfg.loss_dtype == "fp64" else FLOAT
    return n_pos * cfg.d_vocab * (itemsize + 2 * loss)


def forward_row_bytes(cfg: ModelConfig, n_pos: int, itemsize: int, *, logits: bool = True, patterns: bool = False) -> int:
    """The most one sequence's forward holds at once: a block's activations plus either one
    layer's explicit attention (`patterns`) or the logits at the end (`logits`), whichever is
    larger (the pattern is freed before the unembedding runs)."""
    extra = max(pattern_bytes(cfg, n_pos, itemsize) if patterns else 0, logits_bytes(cfg, n_pos, itemsize) if logits else 0)
    return stream_bytes(cfg, n_pos, itemsize) + extra


def model_bytes(cfg: ModelConfig, itemsize: int) -> int:
    """Parameters and buffers of a `Transformer` built from `cfg` (rotary tables included)."""
    d, h, e, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    per_layer = 4 * h * d * e + (3 if cfg.gated_mlp else 2) * d * m
    if cfg.bias:
        per_layer += 3 * h * e + d + (m + d if m else 0)
    per_layer += (2 if m else 1) * 2 * d + (h if cfg.smeared_key else 0)  # norm gains and biases, smearing logits
    total = cfg.n_layers * per_layer + 2 * cfg.d_vocab * d + 2 * d + (cfg.d_vocab if cfg.bias else 0)
    if cfg.positional in ("learned", "shortformer"):
        total += cfg.n_ctx * d
    if cfg.positional == "rotary":
        total += cfg.n_layers * 2 * cfg.n_ctx * cfg.rotary_dims
    return total * itemsize


def largest_tensor_bytes(cfg: ModelConfig, itemsize: int) -> int:
    """The largest single weight (what loading a checkpoint holds beside the model)."""
    return max(cfg.d_vocab * cfg.d_model, cfg.d_model * max(cfg.d_mlp, cfg.n_heads * cfg.d_head), cfg.n_ctx * cfg.d_model) * itemsize
