"""`ModelConfig`: the one validated description of a transformer. Every module reads what it needs
from it, so a new option touches one place."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from icl_lab._config import FrozenConfig


class ModelConfig(FrozenConfig):
    """A decoder-only transformer.

    Attributes:
        n_layers: number of blocks (1-6 for the models icl-lab trains; more for imports).
        d_model: residual stream width.
        n_heads: attention heads per layer.
        d_head: width of each head; defaults to d_model // n_heads.
        d_mlp: MLP hidden width; 0 makes the model attention-only.
        d_vocab: vocabulary size.
        n_ctx: maximum context length.
        positional: "learned" (added to the residual stream), "shortformer" (added to the query
            and key inputs of every layer only, as in Olsson et al.'s small models, so the
            residual stream and values carry no position) or "rotary".
        normalization: "layernorm" or "rmsnorm" (pre-norm, with a final norm), or "none".
        norm_eps: the norm's epsilon.
        bias: whether linear maps have biases.
        smeared_key: learn one scalar alpha per head and use
            k_j <- sigmoid(alpha) k_j + (1 - sigmoid(alpha)) k_{j-1} (the first key is unchanged).
        act_fn: MLP non-linearity: "gelu" (exact), "gelu_new" (GPT-2's tanh approximation), "relu"
            or "silu".
        gated_mlp: a gated MLP, act(x W_gate) * (x W_in) then W_out (SwiGLU with silu, as Llama).
        parallel_attn_mlp: attention and MLP read the same residual stream and add together
            (GPT-NeoX / Pythia): resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre)).
        init_std: std of the normal initialisation; 0 (the default) means 0.8/sqrt(d_model), as in
            TransformerLens (0.1 at d_model=64; GPT-2's 0.02 at 64 wide stalls induction-head
            formation). Output projections are further scaled by 1/sqrt(2 n_layers).
        rotary_base: base of the rotary frequencies.
        rotary_dim: how many leading dimensions of each head rotary positions rotate; 0 means all
            (GPT-NeoX / Pythia rotate a quarter).
        loss_dtype: precision of the log-softmax in `per_token_loss` (the logits themselves are
            unchanged). "fp64" as Nanda et al.'s grokking runs: in float32 a very confident
            prediction's loss is a multiple of 1.2e-7 and its gradient is biased, so a model that
            fits its training set perfectly sees loss spikes and its weights stop shrinking.
    """

    n_layers: int = Field(ge=1, le=64)
    d_model: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_head: int = Field(default=0, ge=0)
    d_mlp: int = Field(default=0, ge=0)
    d_vocab: int = Field(ge=2)
    n_ctx: int = Field(ge=2)
    positional: Literal["learned", "shortformer", "rotary"] = "learned"
    normalization: Literal["layernorm", "rmsnorm", "none"] = "layernorm"
    norm_eps: float = Field(default=1e-5, gt=0)
    bias: bool = True
    smeared_key: bool = False
    act_fn: Literal["gelu", "gelu_new", "relu", "silu"] = "gelu"
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    init_std: float = Field(default=0.0, ge=0)
    rotary_base: float = Field(default=10000.0, gt=0)
    rotary_dim: int = Field(default=0, ge=0)
    loss_dtype: Literal["fp32", "fp64"] = "fp32"
    _device: str = PrivateAttr("cpu")  # where the model built from it lives (`Transformer` keeps it current)

    def __eq__(self, other: object) -> bool:  # the fields only: where a model lives is not part of its description
        return isinstance(other, ModelConfig) and self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(tuple(self.model_dump().items()))

    @model_validator(mode="before")
    @classmethod
    def _default_d_head(cls, data):
        if isinstance(data, dict) and not data.get("d_head"):
            d_model, n_heads = data.get("d_model"), data.get("n_heads")
            if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0:
                if d_model % n_heads:
                    raise ValueError(
                        f"d_model={d_model} is not divisible by n_heads={n_heads}; set d_head explicitly"
                    )
                data = {**data, "d_head": d_model // n_heads}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.positional == "rotary" and self.rotary_dims % 2:
            raise ValueError(f"rotary positions need an even rotary_dim, got {self.rotary_dims}; change d_head or rotary_dim")
        if self.rotary_dim > self.d_head:
            raise ValueError(f"rotary_dim={self.rotary_dim} exceeds d_head={self.d_head}; lower it")
        if (self.gated_mlp or self.parallel_attn_mlp) and self.attn_only:
            raise ValueError("gated_mlp and parallel_attn_mlp need an MLP; set d_mlp > 0")
        return self

    @property
    def rotary_dims(self) -> int:
        """Dimensions of each head that rotary positions rotate."""
        return self.rotary_dim or self.d_head

    @property
    def init_scale(self) -> float:
        return self.init_std or 0.8 / self.d_model**0.5

    @property
    def attn_only(self) -> bool:
        return self.d_mlp == 0

    # ---- TransformerLens's names for the same facts (HookedTransformerConfig) ----------------
    @property
    def normalization_type(self) -> str | None:
        """TransformerLens's name for `normalization`: "LN", "RMS" or None."""
        return {"layernorm": "LN", "rmsnorm": "RMS"}.get(self.normalization)

    @property
    def positional_embedding_type(self) -> str:
        """TransformerLens's name for `positional`: "standard", "shortformer" or "rotary"."""
        return "standard" if self.positional == "learned" else self.positional

    @property
    def device(self) -> str:
        """Where the model this config belongs to lives ("cpu", "cuda:0", ...), as TransformerLens's
        `cfg.device`; "cpu" for a config no model owns."""
        return self._device
