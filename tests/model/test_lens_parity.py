"""The TransformerLens parity suite: each row is a call a TransformerLens user types, the icl-lab
call that does the same, and a check that runs both on the same weights (a text model exported
with `to_transformer_lens`, the same BPE tokenizer on both sides) and compares the outputs to
1e-5. `ROWS` is also the source of the table in docs/api.md (`python scripts/parity_table.py`
writes it; `test_the_docs_table_is_current` fails when it is stale). A row whose status is not
"equal" says why the call differs on purpose, and its check shows what icl-lab does instead."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from icl_lab.data.tokenizer import EOT, Tokenizer
from icl_lab.errors import ConfigError
from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens
from tests.conftest import tiny_config
from tests.model.test_transformer_lens_parity import _randomise_biases_and_gains

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
ATOL = 1e-5
CORPUS = "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n" * 20
TEXTS = ["def add(a, b): return a", "class Point"]
SAME_LENGTH = ["self.x = x", "self.y = y"]


@dataclass(frozen=True)
class Row:
    tl: str  # the TransformerLens call
    ours: str  # the icl-lab call
    check: Callable  # check(model, ref) -> None, asserting equality (or the documented difference)
    status: str = "equal"


def _hf_tokenizer(folder: Path):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # TransformerLens reloads the tokenizer from its folder (to add BOS), so it must live in one
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT).save_pretrained(folder)
    return tok, AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tok, hf = _hf_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    cfg = tiny_config(d_vocab=tok.get_vocab_size(), n_ctx=48, d_mlp=64, normalization="layernorm", positional="learned")
    model = _randomise_biases_and_gains(Transformer(cfg, seed=3)).eval()
    model.tokenizer = Tokenizer("bpe", {"hf": tok.to_str()})
    model.bos_id = model.tokenizer.eot
    ref = to_transformer_lens(model)
    ref.set_tokenizer(hf, default_padding_side="right")
    return model, ref


def _close(a, b, atol=ATOL):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
        assert a.shape == b.shape, (a.shape, b.shape)
        assert torch.allclose(a, b, atol=atol), (a - b).abs().max()
    else:
        assert a == b, (a, b)


def _tokens(model):
    return model.to_tokens(SAME_LENGTH)


def _both(fn):
    """A check that runs the same call on both models and compares."""
    return lambda model, ref: _close(fn(model), fn(ref))


def _cache_pair(model, ref, *args, **kw):
    return model.run_with_cache(*args, **kw)[1], ref.run_with_cache(*args, **kw)[1]


# ---- checks that need more than one line --------------------------------------------------------
def _to_tokens_left(model, ref):
    ours, mask = model.to_tokens(TEXTS, padding_side="left", return_mask=True)
    _close(ours, ref.to_tokens(TEXTS, padding_side="left"))
    with pytest.raises(ConfigError, match="return_mask=True"):
        model.to_tokens(TEXTS, padding_side="left")


def _padded_logits(model, ref):
    ours, theirs = model(TEXTS, padding_side="right"), ref(TEXTS, padding_side="right")
    for i, n in enumerate(model.to_tokens(TEXTS, padding_side="right", return_mask=True)[1].sum(-1).tolist()):
        _close(ours[i, :n], theirs[i, :n])  # the real tokens; padding's logits are nobody's business


def _start_at_layer(model, ref):
    t = _tokens(model)
    _close(model(model(t, stop_at_layer=1), start_at_layer=1), ref(ref(t, stop_at_layer=1), start_at_layer=1))


def _both_return(model, ref):
    ours, theirs = model(_tokens(model), return_type="both"), ref(_tokens(model), return_type="both")
    _close(ours.logits, theirs.logits)
    _close(ours.loss, theirs.loss)


def _generate(kw, seed=None):
    kw = {"verbose": False, **kw}
    prompt = kw.pop("prompt", "def add")

    def check(model, ref):
        outs = []
        for m in (model, ref):
            if seed is not None:
                torch.manual_seed(seed)
            outs.append(m.generate(prompt, **kw))
        _close(outs[0], outs[1])
    return check


def _with_cache(kw, key):
    def check(model, ref):
        ours, theirs = _cache_pair(model, ref, _tokens(model)[:1] if kw.get("remove_batch_dim") else _tokens(model), **kw)
        _close(ours[key], theirs[key])
    return check


def _incl_bwd(model, ref):
    ours, theirs = _cache_pair(model, ref, _tokens(model), return_type="loss", incl_bwd=True)
    for key in ("blocks.1.attn.hook_pattern_grad", "blocks.0.hook_resid_post_grad"):
        _close(ours[key], theirs[key])


def _zero_head(x, hook):
    x[:, :, 0] = 0.0
    return x


def _hooks_loss(model, ref):
    hooks = [("blocks.1.attn.hook_z", _zero_head)]
    _close(model.run_with_hooks(_tokens(model), fwd_hooks=hooks, return_type="loss"),
           ref.run_with_hooks(_tokens(model), fwd_hooks=hooks, return_type="loss"))


def _reset_hooks_end(model, ref):
    outs = []
    for m in (model, ref):
        m.run_with_hooks(_tokens(model), fwd_hooks=[("blocks.1.attn.hook_z", _zero_head)], reset_hooks_end=False)
        still = m(_tokens(model))  # the hook is still attached
        m.reset_hooks()
        outs.append((still, m(_tokens(model))))
    _close(outs[0][0], outs[1][0])
    _close(outs[0][1], outs[1][1])
    assert not torch.allclose(outs[0][0], outs[0][1])


def _add_hook(model, ref):
    outs = []
    for m in (model, ref):
        m.add_hook("blocks.0.attn.hook_z", _zero_head)
        outs.append(m(_tokens(model)))
        m.reset_hooks()
    _close(*outs)


def _layer_and_ctx(model, ref):
    seen = []
    for m in (model, ref):
        def record(x, hook):
            hook.ctx["runs"] = hook.ctx.get("runs", 0) + 1
            return None
        names = [n for n in m.hook_dict if n.endswith("hook_resid_pre")]
        for _ in range(2):
            m.run_with_hooks(_tokens(model), fwd_hooks=[(n, record) for n in names])
        seen.append(([m.hook_dict[n].layer() for n in names], [m.hook_dict[n].ctx["runs"] for n in names]))
        m.reset_hooks()
        assert not any(m.hook_dict[n].ctx for n in names)  # reset_hooks clears the contexts
    _close(seen[0], seen[1])


def _mod_dict(model, ref):
    assert set(model.hook_dict) <= set(ref.mod_dict)
    assert model.mod_dict["blocks.1.attn"] is model.blocks[1].attn


def _weight(name):
    return lambda model, ref: _close(getattr(model, name).detach(), getattr(ref, name).detach())


def _factored(name):
    return lambda model, ref: _close(getattr(model, name).AB.detach(), getattr(ref, name).AB.detach(), atol=1e-4)


def _cfg(name):
    return lambda model, ref: _close(getattr(model.cfg, name), getattr(ref.cfg, name))


def _cache_method(method, *args, **kw):
    def check(model, ref):
        ours, theirs = _cache_pair(model, ref, _tokens(model))
        a, b = getattr(ours, method)(*args, **kw), getattr(theirs, method)(*args, **kw)
        if isinstance(a, tuple):
            assert a[1] == b[1], (a[1][:5], b[1][:5])
            a, b = a[0], b[0]
        _close(a, b)
    return check


def _compute_head_results(model, ref):
    ours, theirs = _cache_pair(model, ref, _tokens(model))
    ours.compute_head_results()
    theirs.compute_head_results()
    _close(ours["result", 1], theirs["result", 1])


def _remove_batch_dim(model, ref):
    ours, theirs = _cache_pair(model, ref, _tokens(model)[:1])
    _close(ours.remove_batch_dim()["resid_post", 1], theirs.remove_batch_dim()["resid_post", 1])


def _logit_attrs_str(model, ref):
    ours, theirs = _cache_pair(model, ref, _tokens(model))
    token = model.to_str_tokens(_tokens(model)[0])[3]
    stack = ours.decompose_resid(pos_slice=-1)
    # ours reads the final norm's gain into W_U; TransformerLens folds it first, so compare the
    # attribution of an exactly folded copy: gain 1 here on both sides
    with torch.no_grad():
        model.ln_final.w.fill_(1.0)
        ref.ln_final.w.fill_(1.0)
    ours, theirs = _cache_pair(model, ref, _tokens(model))
    _close(ours.logit_attrs(ours.decompose_resid(pos_slice=-1), token, pos_slice=-1),
           theirs.logit_attrs(theirs.decompose_resid(pos_slice=-1), token, pos_slice=-1))
    assert stack.shape[0] == ours.decompose_resid(pos_slice=-1).shape[0]


def _get_act_name(model, ref):
    from transformer_lens.utilities import get_act_name as theirs

    from icl_lab.utils import get_act_name as ours

    for args in [("k", 6, "a"), ("pre", 2), ("embed",), ("normalized", 1, "ln2"), ("k6",), ("scale4ln1",), ("scale",),
                 ("attn", 1), ("mlp_post", 0), ("resid_pre", 0)]:
        assert ours(*args) == theirs(*args), args


def _attn_in(model, ref):
    _, cache = model.run_with_cache(_tokens(model))
    with pytest.raises(ConfigError, match="resid_pre"):
        cache["attn_in", 0]


ROWS = [
    Row("model(text)", "model(text)", _both(lambda m: m("def add(a, b):"))),
    Row("model(list_of_texts)", "model(list_of_texts)", _both(lambda m: m(SAME_LENGTH))),
    Row("model(texts, padding_side='right')", "same", _padded_logits),
    Row("model(tokens, return_type='loss')", "same", _both(lambda m: m(_tokens(m), return_type="loss"))),
    Row("model(tokens, return_type='loss', loss_per_token=True)", "same",
        _both(lambda m: m(_tokens(m), return_type="loss", loss_per_token=True))),
    Row("model(tokens, return_type='both')", "same (an `Output(logits, loss)`)", _both_return),
    Row("model(tokens, return_type=None)", "same", lambda m, r: _close(m(_tokens(m), return_type=None), r(_tokens(m), return_type=None))),
    Row("model(tokens, 'loss')", "same", _both(lambda m: m(_tokens(m), "loss"))),
    Row("model(resid, start_at_layer=1)", "same", _start_at_layer),
    Row("model(tokens, stop_at_layer=1)", "same", _both(lambda m: m(_tokens(m), stop_at_layer=1))),
    Row("to_tokens(texts, padding_side='right')", "same", _both(lambda m: m.to_tokens(TEXTS, padding_side="right"))),
    Row("to_tokens(texts, padding_side='left')", "to_tokens(texts, padding_side='left', return_mask=True)", _to_tokens_left,
        "equal tokens; left padding without `return_mask=True` is refused here (the padding would read as text)"),
    Row("to_tokens(text, prepend_bos=False)", "same", _both(lambda m: m.to_tokens("def add", prepend_bos=False))),
    Row("to_str_tokens(text)", "same", _both(lambda m: m.to_str_tokens("def add(a, b)"))),
    Row("to_string(tokens)", "same", _both(lambda m: m.to_string(m.to_tokens("def add(a, b)")[0]))),
    Row("to_single_token(' b')", "same", _both(lambda m: m.to_single_token(" b"))),
    Row("get_token_position(' b', text)", "same", _both(lambda m: m.get_token_position(" b", "def add(a, b): b"))),
    Row("get_token_position(' b', text, mode='last')", "same",
        _both(lambda m: m.get_token_position(" b", "def add(a, b): b", mode="last"))),
    Row("tokens_to_residual_directions(tokens)", "same",
        _both(lambda m: m.tokens_to_residual_directions(_tokens(m)).detach())),
    Row("tokens_to_residual_directions(' b')", "same", _both(lambda m: m.tokens_to_residual_directions(" b").detach())),
    Row("generate(text, max_new_tokens=8, do_sample=False)", "same", _generate(dict(max_new_tokens=8, do_sample=False))),
    Row("generate(text, use_past_kv_cache=False, do_sample=False)", "same",
        _generate(dict(max_new_tokens=8, do_sample=False, use_past_kv_cache=False))),
    Row("generate(tokens, stop_at_eos=True, eos_token_id=t, do_sample=False)", "same",
        _generate(dict(prompt=torch.tensor([[5, 9, 12]]), max_new_tokens=8, do_sample=False, eos_token_id=40))),
    Row("generate(text, top_k=5, temperature=0.7) after torch.manual_seed", "same",
        _generate(dict(max_new_tokens=8, top_k=5, temperature=0.7), seed=0)),
    Row("generate(text, top_p=0.8) after torch.manual_seed", "same", _generate(dict(max_new_tokens=8, top_p=0.8), seed=1)),
    Row("generate(text, do_sample=True, verbose=True)", "same (a progress bar)",
        _generate(dict(max_new_tokens=4, do_sample=True, verbose=True), seed=2)),
    Row("run_with_cache(text)", "same", lambda m, r: _close(m.run_with_cache("def add")[1]["pattern", 1],
                                                           r.run_with_cache("def add")[1]["pattern", 1])),
    Row("run_with_cache(tokens, remove_batch_dim=True)", "same", _with_cache(dict(remove_batch_dim=True), "blocks.0.attn.hook_z")),
    Row("run_with_cache(tokens, return_type='loss', incl_bwd=True)", "same (`name_grad` keys)", _incl_bwd),
    Row("run_with_hooks(tokens, fwd_hooks=..., return_type='loss')", "same", _hooks_loss),
    Row("run_with_hooks(..., reset_hooks_end=False); reset_hooks()", "same", _reset_hooks_end),
    Row("add_hook(name, fn); reset_hooks()", "same", _add_hook),
    Row("hook.layer(), hook.ctx", "same", _layer_and_ctx),
    Row("mod_dict", "same", _mod_dict),
    *[Row(f"model.{n}", "same", _weight(n)) for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O",
                                                      "W_in", "W_out", "b_in", "b_out", "W_E_pos")],
    Row("model.QK.AB", "same (`Factored`: `.AB`, `.BA`, `.T`)", _factored("QK")),
    Row("model.OV.AB", "same", _factored("OV")),
    *[Row(f"cfg.{n}", "same", _cfg(n)) for n in ("normalization_type", "positional_embedding_type", "device")],
    Row("cache['resid_pre', -1]", "same", _with_cache({}, ("resid_pre", -1))),
    Row("cache['scale']", "same", _with_cache({}, "scale")),
    Row("cache['scale', 1, 'ln1']", "same", _with_cache({}, ("scale", 1, "ln1"))),
    Row("cache['normalized', 0, 'ln2']", "same", _with_cache({}, ("normalized", 0, "ln2"))),
    Row("cache['attn_in', l]", "cache['resid_pre', l]", _attn_in,
        "refused: icl-lab's heads share one input, so there is no per-head `attn_in`; the error names `resid_pre`"),
    Row("cache.remove_batch_dim()", "same", _remove_batch_dim),
    Row("cache.stack_activation('pattern')", "same", _cache_method("stack_activation", "pattern")),
    Row("cache.compute_head_results()", "same", _compute_head_results),
    Row("cache.stack_head_results(return_labels=True)", "same", _cache_method("stack_head_results", return_labels=True)),
    Row("cache.stack_neuron_results(2, return_labels=True)", "same", _cache_method("stack_neuron_results", 2, return_labels=True)),
    Row("cache.get_full_resid_decomposition(return_labels=True)", "same",
        _cache_method("get_full_resid_decomposition", return_labels=True)),
    Row("cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=True)", "same",
        _cache_method("get_full_resid_decomposition", expand_neurons=False, apply_ln=True, return_labels=True)),
    Row("cache.get_full_resid_decomposition(1, mlp_input=True, pos_slice=-1)", "same",
        _cache_method("get_full_resid_decomposition", 1, mlp_input=True, pos_slice=-1, return_labels=True)),
    Row("cache.accumulated_resid(apply_ln=True)", "same", _cache_method("accumulated_resid", apply_ln=True, return_labels=True)),
    Row("cache.decompose_resid(return_labels=True)", "same", _cache_method("decompose_resid", return_labels=True)),
    Row("cache.logit_attrs(stack, ' b')", "same (the final norm's gain read into W_U, not folded)", _logit_attrs_str),
    Row("utils.get_act_name(...)", "icl_lab.utils.get_act_name(...)", _get_act_name),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.tl for r in ROWS])
def test_row(pair, row):
    model, ref = pair
    try:
        row.check(model, ref)
    finally:
        model.reset_hooks(including_permanent=True)
        ref.reset_hooks(including_permanent=True)


def table() -> str:
    """The docs table: TransformerLens call, icl-lab call, status."""
    lines = ["| TransformerLens 3.9 | icl-lab | status |", "|---|---|---|"]
    for r in ROWS:
        ours = f"`{r.tl}`" if r.ours == "same" else f"`{r.tl}` {r.ours[5:]}" if r.ours.startswith("same (") else f"`{r.ours}`"
        lines.append(f"| `{r.tl}` | {ours} | {r.status} |")
    equal = sum(r.status == "equal" for r in ROWS)
    lines.append("")
    lines.append(f"{equal} of {len(ROWS)} rows equal ({equal / len(ROWS):.0%}).")
    return "\n".join(lines)


def test_the_docs_table_is_current():
    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    found = re.search(r"<!-- parity-table:start.*?-->\n(.*?)\n<!-- parity-table:end -->", doc, re.S)
    assert found, "docs/api.md has no parity table; run python scripts/parity_table.py"
    assert found.group(1).strip() == table().strip(), "the parity table is stale; run python scripts/parity_table.py"
