import pytest
import torch
import torch.nn.functional as F

from icl_lab.errors import ConfigError
from icl_lab.intervene import attention_pattern_json, patch_heads, patch_residual, path_patch
from icl_lab.measure import repeated_random_tokens
from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens
from tests.conftest import hand_built_induction, tiny_config


def last_token_logit_diff(logits, tokens):
    """A per-sequence metric: logit of token 1 minus token 2 at the last position."""
    return logits[:, -1, 1] - logits[:, -1, 2]


def repeat_loss(logits, tokens):
    """Mean loss on the second half of each sequence."""
    n = tokens.shape[1]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view(len(tokens), -1)
    return loss[:, n // 2 :].mean(1)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 50, (4, 12), generator=g), torch.randint(0, 50, (4, 12), generator=g)


def test_residual_patching_equals_one_pass_per_cell(pair):
    clean, corrupt = pair
    model = Transformer(tiny_config(d_mlp=16), seed=1).eval()
    got = patch_residual(model, clean, corrupt, last_token_logit_diff, max_bytes=5 * 4 * 12 * 50 * 4)
    _, cache = model.run_with_cache(clean)
    for l in range(2):
        for p in (0, 5, 11):
            def hook(x, *, hook, p=p, l=l):
                x = x.clone()
                x[:, p] = cache["resid_pre", l][:, p]
                return x
            want = last_token_logit_diff(model.run_with_hooks(corrupt, [(f"blocks.{l}.hook_resid_pre", hook)]), corrupt).mean()
            assert got[l, p].item() == pytest.approx(want.item(), abs=1e-5)


def test_identical_inputs_patch_to_the_clean_metric(pair):
    clean, _ = pair
    model = Transformer(tiny_config(), seed=2).eval()
    base = last_token_logit_diff(model(clean), clean).mean()
    assert torch.allclose(patch_heads(model, clean, clean, last_token_logit_diff, per_position=True), base, atol=1e-5)
    assert torch.allclose(patch_residual(model, clean, clean, last_token_logit_diff), base, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_head_output_patching_matches_transformer_lens(pair):
    from transformer_lens import patching

    clean, corrupt = pair
    model = Transformer(tiny_config(d_mlp=16), seed=3).eval()
    ref = to_transformer_lens(model)
    _, clean_cache = ref.run_with_cache(clean)
    want = patching.get_act_patch_attn_head_out_all_pos(
        ref, corrupt, clean_cache, lambda logits: last_token_logit_diff(logits, corrupt).mean())
    got = patch_heads(model, clean, corrupt, last_token_logit_diff)
    assert torch.allclose(got, want, atol=1e-5)
    by_pos = patch_heads(model, clean, corrupt, last_token_logit_diff, per_position=True)
    assert by_pos.shape == (2, 2, 12)


def test_path_patching_shows_k_composition_in_the_hand_built_circuit():
    model = hand_built_induction()
    clean, seg = repeated_random_tokens(12, 40, seg_len=9, n_repeats=4, n_examples=8, seed=0)
    corrupt, _ = repeated_random_tokens(12, 40, seg_len=9, n_repeats=4, n_examples=8, seed=1)
    out = path_patch(model, clean, corrupt, sender=(0, 0), receiver=(1, 0), metric=repeat_loss)
    # queries and values read the token subspace, which the previous-token head does not write
    assert out["q"] == pytest.approx(out["clean"], abs=1e-4) and out["v"] == pytest.approx(out["clean"], abs=1e-4)
    assert out["k"] > out["clean"] + 0.5  # keys lose the previous-token match
    with pytest.raises(ConfigError, match="sender in an earlier layer"):
        path_patch(model, clean, corrupt, sender=(1, 0), receiver=(0, 0), metric=repeat_loss)


def test_circuitsvis_export():
    model = Transformer(tiny_config(), seed=0)
    out = attention_pattern_json(model, torch.arange(5), layer=1, str_tokens=list("abcde"))
    assert out["tokens"] == list("abcde")
    att = torch.tensor(out["attention"])
    assert att.shape == (2, 5, 5) and torch.allclose(att.sum(-1), torch.ones(2, 5)) and att.triu(1).abs().max() == 0
    with pytest.raises(ConfigError, match="one string per token"):
        attention_pattern_json(model, torch.arange(5), layer=0, str_tokens=["a"])
