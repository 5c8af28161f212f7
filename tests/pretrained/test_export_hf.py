"""Exporting to Hugging Face transformers: for each architecture written (GPT-2 plain, with b_U,
attention-only, without LayerNorm, with d_head x n_heads != d_model; GPT-NeoX parallel and
sequential; Llama), the folder loads offline with AutoModelForCausalLM and gives icl-lab's logits
to 1e-4; `import_model` reads it back with the same logits; the tokenizer encodes as the model's;
models with no equivalent are refused in one line. Small random models; nothing is downloaded."""

import functools
import json

import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.model import ModelConfig, Transformer
from icl_lab.pretrained import export_hf, import_model

transformers = pytest.importorskip("transformers")

BASE = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=24, d_mlp=64)
GROKKING = dict(n_layers=1, d_model=128, n_heads=4, d_mlp=512, d_vocab=114, n_ctx=4, positional="learned",
                normalization="none", act_fn="relu", bias=False, loss_dtype="fp64")  # the grokking-1l preset's model
SYNTHETIC = dict(n_layers=2, d_model=64, n_heads=1, d_vocab=128, n_ctx=64, d_mlp=0, positional="learned",
                 normalization="none", bias=False)  # the synthetic-2l preset's model
ROTARY = dict(positional="rotary", rotary_dim=4)
# name -> (config, architecture, residual copies, mirrored)
CASES = {
    "gpt2-plain": (dict(BASE, act_fn="gelu_new"), "gpt2", 1, False),
    "gpt2-b_U": (dict(BASE, act_fn="gelu"), "gpt2", 2, False),
    "gpt2-attn-only": (dict(BASE, d_mlp=0), "gpt2", 2, False),
    "gpt2-synthetic-2l": (SYNTHETIC, "gpt2", 2, True),
    "gpt2-grokking-1l": (GROKKING, "gpt2", 2, True),
    "gpt2-d_head": (dict(BASE, n_heads=3, d_head=16, bias=False), "gpt2", 3, False),
    "neox-parallel": (dict(BASE, **ROTARY, parallel_attn_mlp=True), "gpt_neox", 2, False),
    "neox-sequential": (dict(BASE, **ROTARY, act_fn="gelu_new"), "gpt_neox", 2, False),
    "llama": (dict(BASE, positional="rotary", normalization="rmsnorm", gated_mlp=True, act_fn="silu", bias=False, d_head=12),
              "llama", 1, False),
}


def _random(cfg: dict, seed: int = 0, zero_b_U: bool = False) -> Transformer:
    """A model with random weights and random non-zero biases and norm gains (as if trained)."""
    model = Transformer(ModelConfig(**cfg), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.rsplit(".", 1)[-1].startswith("b_"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen) + (1.0 if name.endswith(".w") else 0.0))
        if zero_b_U:
            model.b_U.zero_()
    return model.eval()


def _tokens(cfg: dict, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg["d_vocab"], (3, cfg["n_ctx"]), generator=torch.Generator().manual_seed(seed))


def _hf_logits(folder, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("case", CASES)
def test_exported_logits_match(tmp_path, case):
    cfg, arch, copies, mirror = CASES[case]
    model = _random(cfg, zero_b_U=case == "gpt2-plain")
    path = export_hf(model, tmp_path / "hf")
    record = json.loads((path / "config.json").read_text())["icl_lab"]
    assert (record["architecture"], record["residual_copies"], record["mirror"]) == (arch, copies, mirror)
    assert record["max_abs_logit_diff"] <= 1e-4
    tokens = _tokens(cfg)
    with torch.no_grad():
        assert (_hf_logits(path, tokens) - model.logits(tokens)).abs().max() <= 1e-4
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "tokenizer.json", "tokenizer_config.json"]


def test_plain_gpt2_is_the_inverse_of_the_importer(tmp_path):
    """Learned positions, LayerNorm, d_head x n_heads = d_model and b_U = 0: no tricks, the same shapes."""
    model = _random(CASES["gpt2-plain"][0], zero_b_U=True)
    hf = json.loads((export_hf(model, tmp_path / "hf") / "config.json").read_text())
    assert hf["n_embd"] == 32 and hf["n_inner"] == 64 and hf["tie_word_embeddings"] is False
    back = import_model(tmp_path / "hf", tmp_path / "run").model()
    for name, p in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], p), name


@pytest.mark.parametrize("case", ["gpt2-b_U", "gpt2-synthetic-2l", "neox-sequential", "neox-parallel", "llama"])
def test_round_trip_through_import(tmp_path, case):
    cfg = CASES[case][0]
    model = _random(cfg)
    export_hf(model, tmp_path / "hf")
    back = import_model(tmp_path / "hf", tmp_path / "run").model()
    tokens = _tokens(cfg, seed=2)
    with torch.no_grad():
        assert (back.logits(tokens) - model.logits(tokens)).abs().max() <= 1e-4
    assert back.cfg.parallel_attn_mlp == model.cfg.parallel_attn_mlp


@pytest.mark.parametrize("over, match", [
    (dict(positional="shortformer"), "shortformer positions have no Hugging Face equivalent"),
    (dict(smeared_key=True), "smeared-key models have no Hugging Face equivalent"),
    (dict(normalization="rmsnorm"), "learned positions export as GPT-2, which needs LayerNorm or no normalization"),
    (dict(positional="rotary", gated_mlp=True, act_fn="gelu"), "export as Llama, which needs RMSNorm, act_fn silu, no biases"),
])
def test_models_without_an_equivalent_are_refused_in_one_line(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match) as e:
        export_hf(Transformer(ModelConfig(**{**BASE, **over})), tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_overwritten(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists; choose another --out"):
        export_hf(_random(BASE), tmp_path / "hf")
    assert (tmp_path / "hf" / "notes.txt").read_text() == "mine"


def test_a_synthetic_model_gets_a_word_level_tokenizer(tmp_path):
    model = _random(SYNTHETIC)
    model.bos_id = 0
    tok = transformers.AutoTokenizer.from_pretrained(export_hf(model, tmp_path / "hf"), local_files_only=True)
    assert tok("t3 t17")["input_ids"] == [3, 17] and tok("t3 nonsense")["input_ids"] == [3, 0]
    assert tok.bos_token == "t0" and tok.decode([3, 17]) == "t3 t17"


@functools.cache
def _text_tokenizers() -> dict:
    """A byte-level BPE trained here, the same vocabulary as tiktoken ranks (the gpt2 kind), bytes and chars."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from icl_lab.data.tokenizer import EOT, Tokenizer
    from icl_lab.pretrained.export_tokenizer import _byte_alphabet

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    text = ["The quick brown fox jumps over the lazy dog; def f(x): return x ** 2  # twelve apples"] * 20
    hf.train_from_iterator(text, trainers.BpeTrainer(vocab_size=320, special_tokens=[EOT], show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    unbyte = {c: b for b, c in _byte_alphabet().items()}
    ranks = {bytes(unbyte[c] for c in token): i for token, i in hf.get_vocab().items() if token != EOT}
    import base64

    tiktoken_bpe = "\n".join(f"{base64.b64encode(b).decode()} {r}" for b, r in sorted(ranks.items(), key=lambda x: x[1]))
    return {"bpe": Tokenizer("bpe", {"hf": hf.to_str()}), "gpt2": Tokenizer("gpt2", {"tiktoken_bpe": tiktoken_bpe}),
            "byte": Tokenizer("byte", {}), "char": Tokenizer("char", {"chars": ["<unk>", *"The quickbrownfx,2\n"]})}


@pytest.mark.parametrize("kind", ["bpe", "gpt2", "byte", "char"])
def test_a_text_model_keeps_its_tokenizer(tmp_path, kind):
    tok = _text_tokenizers()[kind]
    model = _random(dict(BASE, d_vocab=max(tok.vocab_size, 50)))
    model.tokenizer, model.bos_id = tok, tok.eot
    hf_tok = transformers.AutoTokenizer.from_pretrained(export_hf(model, tmp_path / "hf"), local_files_only=True)
    for text in ("The quick brown fox, 12 apples!\n\tdef f(x): return x ** 2", "naïve café — 3.5 €", ""):
        assert hf_tok(text)["input_ids"] == tok.encode(text), text
    if tok.eot is not None:
        assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.bos_token_id == tok.eot


def test_cli_export_of_a_trained_run(tmp_path):
    """`icl-lab export RUN --format hf --out DIR` on a tiny trained run: it prints the architecture
    and the logit difference; `--json` the record; another --format is a one-line error."""
    from typer.testing import CliRunner

    import icl_lab
    from icl_lab.cli import app

    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 10, "n_checkpoints": 2, "warmup_steps": 1}, model={"d_model": 32})
    run = icl_lab.train(cfg, out=tmp_path / "run")
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(run.path), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert done.exit_code == 0 and "exported step 10 as gpt2, residual stream mirrored x2" in done.stdout, done.output
    done = runner.invoke(app, ["export", str(run.path), "--step", "1", "--format", "hf", "--out", str(tmp_path / "hf1"), "--json"])
    record = json.loads(done.stdout)
    assert record["step"] == 1 and record["max_abs_logit_diff"] <= 1e-4 and record["run"] == str(run.path.resolve())
    tokens = _tokens(SYNTHETIC)
    with torch.no_grad():
        assert (_hf_logits(tmp_path / "hf1", tokens) - run.model(1).logits(tokens)).abs().max() <= 1e-4
    bad = runner.invoke(app, ["export", str(run.path), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert isinstance(bad.exception, ConfigError) and "the only format is hf" in str(bad.exception)
