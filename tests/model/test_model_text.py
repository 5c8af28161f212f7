"""Text in and out of a model (`to_tokens`, `to_str_tokens`, `to_string`, `generate`) and padded
batches: left padding plus an attention mask gives every real token the logits it gets unpadded,
on the fused and the explicit attention path, for every positional scheme and smeared keys."""

import pytest
import torch

from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import ConfigError
from icl_lab.model import Transformer
from tests.conftest import tiny_config

EXPLICIT = [(lambda n: n.endswith("hook_pattern"), lambda x, hook: None)]  # forces the explicit path
VARIANTS = {
    "learned": dict(positional="learned", normalization="layernorm"),
    "rotary-mlp": dict(positional="rotary", d_mlp=32),
    "shortformer": dict(positional="shortformer", normalization="none", bias=False),
    "smeared": dict(positional="learned", smeared_key=True),
    "rotary-smeared": dict(positional="rotary", smeared_key=True, n_layers=3),
}


def _text_model(**over) -> Transformer:
    model = Transformer(tiny_config(d_vocab=256, n_ctx=32, **over), seed=5).eval()
    model.tokenizer, model.bos_id = Tokenizer("byte", {}), 10  # byte 10 ("\n") starts every text
    return model


@pytest.mark.parametrize("over", VARIANTS.values(), ids=VARIANTS.keys())
def test_padded_and_unpadded_logits_agree_on_the_real_tokens(over):
    model = _text_model(**over)
    texts = ["the cat sat on the mat", "a dog", "induction"]
    tokens, mask = model.to_tokens(texts, return_mask=True)
    fused = model(tokens, attention_mask=mask)
    explicit = model.run_with_hooks(tokens, EXPLICIT, attention_mask=mask)
    for i, text in enumerate(texts):
        alone = model(model.to_tokens(text))[0]  # [pos, d_vocab]
        n = alone.shape[0]
        assert int(mask[i].sum()) == n and not mask[i, : tokens.shape[1] - n].any()
        assert torch.allclose(fused[i, -n:], alone, atol=1e-5), (over, text)
        assert torch.allclose(explicit[i, -n:], alone, atol=1e-5), (over, text)


def test_padding_is_never_attended_to():
    model = _text_model()
    tokens, mask = model.to_tokens(["abcdef", "ab"], return_mask=True)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"), attention_mask=mask)
    pattern = cache["pattern", 1][1]  # [head, query_pos, key_pos] of the padded row
    real = mask[1].bool()
    assert pattern[:, real][:, :, ~real].abs().max() == 0  # real queries put no weight on padding
    assert torch.isfinite(cache["pattern", 0]).all()  # padding queries still have a finite softmax


def test_to_tokens_prepends_bos_and_round_trips():
    model = _text_model()
    tokens = model.to_tokens("hello")
    assert tokens.tolist() == [[10, *b"hello"]]
    assert model.to_tokens("hello", prepend_bos=False).tolist() == [list(b"hello")]
    assert model.to_string(tokens[0, 1:]) == "hello"
    assert model.to_string(tokens) == ["\nhello"]
    assert model.to_str_tokens("hi") == ["\\x0a", "h", "i"]
    assert model.to_str_tokens(tokens.repeat(2, 1))[1][1:] == list("hello")


def test_to_tokens_refuses_what_it_cannot_tokenize():
    model = _text_model()
    with pytest.raises(ConfigError, match=r"texts of unequal length need padding; call to_tokens\(texts, return_mask=True\)"):
        model.to_tokens(["a", "bcd"])
    with pytest.raises(ConfigError, match="more than n_ctx=32; shorten it"):
        model.to_tokens("x" * 40)
    with pytest.raises(ConfigError, match="a string or a non-empty list of strings"):
        model.to_tokens([])
    model.bos_id = None
    with pytest.raises(ConfigError, match=r"no BOS token; call to_tokens\(..., prepend_bos=False\)"):
        model.to_tokens("a", prepend_bos=True)
    synthetic = Transformer(tiny_config())
    with pytest.raises(ConfigError, match="this model has no tokenizer"):
        synthetic.to_tokens("a")


def test_generate_greedy_matches_argmax_rollout_and_sampling_is_seeded():
    model = _text_model(positional="rotary")
    prompt = model.to_tokens("abc")
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (1, prompt.shape[1] + 6) and torch.equal(out[:, :4], prompt)
    expected = prompt
    for _ in range(6):  # greedy generation is the argmax rolled out by hand
        expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)
    a = model.generate(prompt, 8, temperature=1.0, top_k=5, seed=3)
    assert torch.equal(a, model.generate(prompt, 8, temperature=1.0, top_k=5, seed=3))
    top5 = model(a[:, :-1])[0, 3:].topk(5, dim=-1).indices  # every sampled token was among the 5 best
    assert (top5 == a[0, 4:, None]).any(-1).all()


def test_generate_on_a_padded_batch_continues_each_text_as_alone():
    model = _text_model()
    tokens, mask = model.to_tokens(["hello there", "hi"], return_mask=True)
    batch = model.generate(tokens, 5, temperature=0, attention_mask=mask)
    alone = model.generate(model.to_tokens("hi"), 5, temperature=0)
    assert torch.equal(batch[1, -alone.shape[1]:], alone[0])


def test_generate_slides_its_window_past_n_ctx():
    model = _text_model()
    out = model.generate(model.to_tokens("x" * 30), 10, temperature=0)
    assert out.shape == (1, 41)


def test_stop_at_layer_returns_the_residual_stream():
    model = _text_model(d_mlp=32)
    tokens = model.to_tokens("stop here")
    _, cache = model.run_with_cache(tokens)
    assert torch.allclose(model(tokens, stop_at_layer=1), cache["resid_pre", 1], atol=1e-6)
    assert torch.allclose(model(tokens, stop_at_layer=-1), cache["resid_pre", 1], atol=1e-6)
    assert torch.equal(model(tokens, stop_at_layer=0), cache["embed"] + cache["pos_embed"])



@pytest.mark.parametrize("over", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_kv_cache_gives_the_logits_of_the_whole_sequence(over):
    from icl_lab.model.attention import KVCache

    model = _text_model(**over)
    tokens, mask = model.to_tokens(["the cat sat on the mat", "a dog"], return_mask=True)
    full = model(tokens, attention_mask=mask)
    cache = KVCache(model.cfg.n_layers)
    first = model(tokens[:, :9], attention_mask=mask[:, :9], kv_cache=cache)
    rest = [model(tokens[:, i : i + 1], attention_mask=mask[:, : i + 1], kv_cache=cache) for i in range(9, tokens.shape[1])]
    stepped = torch.cat([first, *rest], dim=1)
    real = mask.bool()
    assert cache.n_pos == tokens.shape[1]
    assert torch.allclose(stepped[real], full[real], atol=1e-5)


@pytest.mark.parametrize("over", VARIANTS.values(), ids=VARIANTS.keys())
def test_generate_with_and_without_the_kv_cache_agree(over):
    model = _text_model(**over)
    tokens, mask = model.to_tokens(["hello there", "hi"], return_mask=True)
    cached = model.generate(tokens, 25, temperature=0, attention_mask=mask)  # runs past n_ctx=32: the window slides
    assert torch.equal(cached, model.generate(tokens, 25, temperature=0, attention_mask=mask, use_kv_cache=False))
    sampled = model.generate(tokens, 10, top_k=4, attention_mask=mask, seed=1)
    assert torch.equal(sampled, model.generate(tokens, 10, top_k=4, attention_mask=mask, seed=1, use_kv_cache=False))


def test_the_loss_of_a_padded_batch_counts_real_targets_only():
    model = _text_model(positional="rotary")
    texts = ["the cat sat on the mat", "a dog"]
    tokens, mask = model.to_tokens(texts, return_mask=True)
    per_token = model.per_token_loss(tokens, mask)
    alone = [model.per_token_loss(model.to_tokens(t))[0] for t in texts]
    assert torch.allclose(per_token[1, -alone[1].shape[0]:], alone[1], atol=1e-5)
    assert per_token[1, : -alone[1].shape[0]].abs().max() == 0
    expected = torch.cat(alone).mean()
    assert torch.allclose(model.loss(tokens, mask), expected, atol=1e-5)
