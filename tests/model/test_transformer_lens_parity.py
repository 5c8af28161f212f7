"""Our model against TransformerLens (a test-only dependency) on identical weights: logits and the
activations at shared hook names must agree for every option the export maps (positions, norms and
their epsilon, activations, gated and parallel MLPs, partial rotary), with random biases and norm
gains; every option it cannot map is refused with a pinned message."""

import pytest
import torch

from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens
from tests.conftest import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _randomise_biases_and_gains(model: Transformer, seed: int = 0) -> Transformer:
    """Biases and norm gains start at 0 and 1, where a wrong placement would go unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b_") or (".ln" in f".{name}" and leaf in ("w", "b")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if leaf == "w" else 0.0))
    return model


SUPPORTED = {
    "learned-ln-mlp": dict(positional="learned", normalization="layernorm", d_mlp=64),
    "learned-gelu_new": dict(positional="learned", normalization="layernorm", d_mlp=48, act_fn="gelu_new"),
    "shortformer-attn-only": dict(positional="shortformer", normalization="none", bias=False),
    "shortformer-ln-relu": dict(positional="shortformer", normalization="layernorm", d_mlp=48, act_fn="relu"),
    "shortformer-rmsnorm-silu": dict(positional="shortformer", normalization="rmsnorm", d_mlp=40, act_fn="silu"),
    "rotary": dict(positional="rotary", normalization="layernorm"),
    "rotary-partial-parallel": dict(positional="rotary", rotary_dim=8, rotary_base=1234.5, d_mlp=64,
                                    parallel_attn_mlp=True, norm_eps=1e-2),  # Pythia-like
    "llama-like": dict(positional="rotary", normalization="rmsnorm", norm_eps=0.1, d_mlp=48, act_fn="silu",
                       gated_mlp=True, bias=False),
    "geglu-no-norm": dict(positional="learned", normalization="none", d_mlp=32, gated_mlp=True, bias=False),
    "rmsnorm-parallel-no-bias": dict(normalization="rmsnorm", d_mlp=32, parallel_attn_mlp=True, bias=False),
    "wide-heads": dict(n_heads=4, d_head=12, d_mlp=32, normalization="layernorm", norm_eps=0.5),
}


@pytest.mark.parametrize("over", SUPPORTED.values(), ids=SUPPORTED.keys())
def test_logits_and_activations_match_transformer_lens(over, tokens):
    model = _randomise_biases_and_gains(Transformer(tiny_config(**over), seed=7))
    ref = to_transformer_lens(model)
    assert torch.allclose(model(tokens), ref(tokens), atol=1e-4)  # our fused attention path
    logits, cache = model.run_with_cache(tokens)
    ref_logits, ref_cache = ref.run_with_cache(tokens)
    assert torch.allclose(logits, ref_logits, atol=1e-4), (logits - ref_logits).abs().max()
    names = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
             "blocks.1.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.1.hook_attn_out", "blocks.1.hook_resid_post"]
    if model.cfg.positional == "rotary":
        names += ["blocks.0.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"]
    if not model.cfg.attn_only:
        names += ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.1.hook_mlp_out"]
    if model.cfg.normalization != "none":
        names += ["blocks.1.ln1.hook_normalized", "ln_final.hook_normalized"]
    for name in names:
        assert torch.allclose(cache[name], ref_cache[name], atol=1e-5), name


def test_every_model_option_is_mapped_or_refused_by_the_export():
    from icl_lab.model import ModelConfig
    from icl_lab.model.export import _KNOWN_OPTIONS

    assert _KNOWN_OPTIONS == set(ModelConfig.model_fields), "map or refuse the new option in to_transformer_lens"


def test_an_option_the_export_does_not_know_is_refused_unless_default(monkeypatch):
    from icl_lab.errors import ConfigError
    from icl_lab.model import export

    monkeypatch.setattr(export, "_KNOWN_OPTIONS", export._KNOWN_OPTIONS - {"rotary_base"})
    to_transformer_lens(Transformer(tiny_config(positional="rotary")))  # the default: the same model
    with pytest.raises(ConfigError, match=r"option rotary_base=500.0 is not supported by to_transformer_lens"):
        to_transformer_lens(Transformer(tiny_config(positional="rotary", rotary_base=500.0)))


def test_smeared_key_models_cannot_be_exported():
    from icl_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="smeared-key models have no TransformerLens equivalent; export a model without"):
        to_transformer_lens(Transformer(tiny_config(smeared_key=True)))


def test_gated_mlp_with_biases_cannot_be_exported():
    from icl_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gated_mlp with bias=True has no TransformerLens equivalent .* bias=False"):
        to_transformer_lens(Transformer(tiny_config(d_mlp=32, gated_mlp=True, bias=True)))


def test_export_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    to_transformer_lens(Transformer(tiny_config(d_mlp=16), seed=1))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_head_scores_from_a_transformer_lens_cache_match(tmp_path):
    import icl_lab
    from icl_lab.measure import prefix_matching_scores, previous_token_scores, repeated_random_tokens
    from icl_lab.measure.head_scores import masked_attention_score, prefix_matching_mask, previous_token_mask

    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 400, "n_checkpoints": 4})
    model = icl_lab.train(cfg, out=tmp_path / "run").model()  # trained through the phase change
    ref = to_transformer_lens(model)
    toks, seg = repeated_random_tokens(cfg.model.d_vocab, cfg.model.n_ctx, n_examples=10, seed=2)
    _, cache = ref.run_with_cache(toks)
    tl_patterns = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(cfg.model.n_layers)])
    ours = prefix_matching_scores(model, toks, seg_len=seg)
    assert torch.allclose(ours, masked_attention_score(tl_patterns, prefix_matching_mask(toks.shape[1], seg)), atol=1e-5)
    assert ours.max() > 0.3  # a real induction head, not a trivially equal pair of zeros
    prev = previous_token_scores(model, toks)
    assert torch.allclose(prev, masked_attention_score(tl_patterns, previous_token_mask(toks.shape[1])), atol=1e-5)
