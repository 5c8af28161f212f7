import pytest
import torch

from icl_lab.intervene import direct_logit_attribution, logit_lens
from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens
from tests.conftest import hand_built_ov, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

VARIANTS = [dict(normalization="layernorm", d_mlp=32), dict(normalization="none", bias=False),
            dict(positional="rotary", d_mlp=16), dict(positional="shortformer"),
            dict(normalization="rmsnorm", d_mlp=16, gated_mlp=True, act_fn="silu", positional="rotary", bias=False),
            dict(d_mlp=16, parallel_attn_mlp=True, positional="rotary", rotary_dim=4)]


@pytest.mark.parametrize("over", VARIANTS, ids=["ln-mlp", "no-ln", "rotary", "shortformer", "llama-like", "neox-like"])
def test_direct_logit_attribution_reconstructs_the_logits_exactly(over, tokens):
    model = Transformer(tiny_config(**over), seed=6).eval()
    names, terms, const = direct_logit_attribution(model, tokens)
    assert len(names) == terms.shape[0] and "L1H1" in names
    assert torch.allclose(terms.sum(0) + const, model(tokens), atol=1e-4)


def test_identity_ov_head_attributes_its_copy(tokens):
    model = hand_built_ov(+1.0)
    toks = torch.randint(0, 10, (2, 8))
    names, terms, _ = direct_logit_attribution(model, toks)
    head = terms[names.index("L0H0")]  # [batch, pos, vocab]
    # at position 0 the head attends only to itself, so it raises exactly that token's logit by 1
    assert torch.allclose(head[:, 0], torch.nn.functional.one_hot(toks[:, 0], 10).float())


@pytest.mark.parametrize("over", VARIANTS[:2], ids=["ln-mlp", "no-ln"])
def test_logit_lens_matches_transformer_lens(over, tokens):
    model = Transformer(tiny_config(**over), seed=8).eval()
    lens = logit_lens(model, tokens)
    assert lens.shape == (3, 3, 24, 50)
    assert torch.allclose(lens[-1], model(tokens), atol=1e-5)
    ref = to_transformer_lens(model)
    _, cache = ref.run_with_cache(tokens)
    for l in range(2):
        ln_final = getattr(ref, "ln_final", None) or (lambda x: x)  # TransformerLens has none without LayerNorm
        expected = ref.unembed(ln_final(cache[f"blocks.{l}.hook_resid_pre"]))
        assert torch.allclose(lens[l], expected, atol=1e-5)
