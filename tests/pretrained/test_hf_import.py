"""Importing Hugging Face GPT-2 folders: logits equal transformers' to 1e-4 in fp32, from
safetensors or a tensors-only .bin, and bad folders fail in one line. Random small configs are
built in the test; nothing is downloaded."""

import pytest
import torch

from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.pretrained import import_model

transformers = pytest.importorskip("transformers")


def _gpt2(tmp_path, safe=True, **over):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=48,
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **over)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # give the biases and norms non-trivial values so the test can fail
        for name, p in model.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / "hf"
    model.save_pretrained(folder, safe_serialization=safe)
    return model, folder


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_gpt2_logits_match_transformers(tmp_path, safe):
    hf, folder = _gpt2(tmp_path, safe)
    run = import_model(folder, tmp_path / "run")
    tokens = torch.randint(0, 300, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
    ours = run.model().logits(tokens)
    assert (ours - expected).abs().max() < 1e-4
    assert run.meta["family"] == "gpt2" and run.checkpoints == [0]
    assert run.config.model.act_fn == "gelu_new" and run.config.model.d_mlp == 256


def _save(tmp_path, model_cls, cfg):
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a wrong mapping shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


FAMILY_CONFIGS = {
    "neox": lambda: (transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128, vocab_size=300,
        max_position_embeddings=48, hidden_dropout=0, attention_dropout=0)),
    "llama-gqa": lambda: (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=96,
        vocab_size=300, max_position_embeddings=48, rms_norm_eps=1e-6)),
    "llama-tied": lambda: (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=2, intermediate_size=96,
        vocab_size=300, max_position_embeddings=48, tie_word_embeddings=True, rope_theta=100000.0)),
}


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_neox_and_llama_logits_match_transformers(tmp_path, family):
    model_cls, cfg = FAMILY_CONFIGS[family]()
    hf, folder = _save(tmp_path, model_cls, cfg)
    run = import_model(folder, tmp_path / "run")
    tokens = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(tokens).logits
    assert (run.model().logits(tokens) - expected).abs().max() < 1e-4
    m = run.config.model
    if family == "neox":
        assert m.parallel_attn_mlp and m.rotary_dim == 4 and m.normalization == "layernorm"
    else:
        assert m.gated_mlp and m.normalization == "rmsnorm" and not m.bias


def test_the_imported_model_has_the_usual_hooks(tmp_path):
    _, folder = _gpt2(tmp_path)
    model = import_model(folder, tmp_path / "run").model()
    _, cache = model.run_with_cache(torch.arange(10)[None], names_filter=lambda n: n.endswith("hook_pattern"))
    assert cache["pattern", 1].shape == (1, 4, 10, 10)


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        import_model(tmp_path, tmp_path / "run")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="no .*safetensors or pytorch_model"):
        import_model(tmp_path, tmp_path / "run")
    _, folder = _gpt2(tmp_path / "x")
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"gpt2"', '"mamba"'))
    with pytest.raises(ConfigError, match="model_type 'mamba' cannot be imported yet"):
        import_model(folder, tmp_path / "run")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text('{"model_type": "gpt2"}')
    torch.save({"w": torch.zeros(1), "code": object()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a plain tensor file"):
        import_model(evil, tmp_path / "run")


def test_cli_import(tmp_path):
    import subprocess
    import sys

    _, folder = _gpt2(tmp_path)
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "import", str(folder), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "imported gpt2 (2 layers, d_model 64, 4 heads, vocab 300; 1 checkpoint)" in r.stdout, r.stderr
    again = subprocess.run([sys.executable, "-m", "icl_lab.cli", "import", str(folder), "--out", str(tmp_path / "run")],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "already holds a run" in again.stderr


def test_a_folder_of_revisions_is_one_run_that_analyze_reads(tmp_path):
    """Pythia-style step*/ revisions become one run with one checkpoint per revision (tokens =
    step x 1024 x n_ctx); `analyze` measures it like a trained run."""
    import icl_lab

    model_cls, cfg = FAMILY_CONFIGS["neox"]()
    for step in (0, 1000, 2000, 4000):
        torch.manual_seed(step)
        model_cls(cfg).save_pretrained(tmp_path / "revs" / f"step{step}")
    (tmp_path / "revs" / "notes").mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(12):
        (texts / f"{i}.txt").write_text(f"document {i}: the quick brown fox jumps over the lazy dog. " * 60)
    run = import_model(tmp_path / "revs", tmp_path / "run", corpus=str(texts))
    assert run.checkpoints == [0, 1000, 2000, 4000] and run.meta["revisions"] == [0, 1000, 2000, 4000]
    summary = icl_lab.analyze([run], n_examples=8)[str(run.path)]
    table = run.metrics()
    assert sorted(table[table.metric == "loss"].tokens) == [s * 1024 * 48 for s in (0, 1000, 2000, 4000)]
    assert len(summary["heads"]) == 8 and "reason" in summary["phase_change"]  # 3 checkpoints after step 0
    single = import_model(tmp_path / "revs" / "step1000", tmp_path / "one", corpus=str(texts))
    assert icl_lab.analyze([single], n_examples=8)[str(single.path)]["phase_change"]["detected"] is False


def test_gguf_llama_logits_match_transformers(tmp_path):
    """A random Llama written as llama.cpp writes GGUF (Q/K rows permuted for its rope layout,
    Q8_0 for one matrix) imports with the permutation undone."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    model_cls, cfg = FAMILY_CONFIGS["llama-gqa"]()
    hf, _ = _save(tmp_path, model_cls, cfg)
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}

    def permute(w, n_head):  # llama.cpp's convert_hf_to_gguf permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    for add, value in (("block_count", 2), ("context_length", 48), ("embedding_length", 64), ("feed_forward_length", 96),
                       ("head_count", 4), ("head_count_kv", 2), ("rope_freq_base", 10000.0), ("layer_norm_rms_eps", 1e-6),
                       ("rope_dimension_count", 16)):
        getattr(w, f"add_{add}")(value)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {v: k for k, v in __import__("icl_lab.pretrained.gguf_file", fromlist=["NAMES"]).NAMES.items()}
    for i in range(2):
        for hf_name, gguf_name in names.items():
            t = sd[f"model.layers.{i}.{hf_name}"]
            if gguf_name == "attn_q.weight":
                t = permute(t, 4)
            elif gguf_name == "attn_k.weight":
                t = permute(t, 2)
            if i == 1 and gguf_name == "ffn_up.weight":  # one quantised tensor: dequantisation is exercised
                q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(f"blk.{i}.{gguf_name}", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                sd[f"model.layers.{i}.{hf_name}"] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
                continue
            w.add_tensor(f"blk.{i}.{gguf_name}", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with torch.no_grad():  # the reference uses the same (dequantised) up-projection
        hf.model.layers[1].mlp.up_proj.weight.copy_(torch.from_numpy(np.asarray(sd["model.layers.1.mlp.up_proj.weight"])))
    run = import_model(tmp_path / "m.gguf", tmp_path / "run")
    tokens = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(tokens).logits
    assert (run.model().logits(tokens) - expected).abs().max() < 1e-4
    assert run.config.data.eval_ctx == 48 and run.meta["family"] == "llama"


def test_an_imported_model_with_one_checkpoint_at_step_0_is_analysed_and_reported(tmp_path):
    """An imported model has one checkpoint, at step 0 (0 tokens): the report drew its loss by
    position from checkpoints after step 0 only and crashed on an empty log axis."""
    import icl_lab
    from icl_lab.report import write_report

    _, folder = _gpt2(tmp_path)
    run = import_model(folder, tmp_path / "run", corpus=str(_text_folder(tmp_path)))
    icl_lab.analyze([run], n_examples=8)
    report = write_report([run.path], out=tmp_path / "report.html")
    assert "loss by token index" in report.path.read_text()


def _text_folder(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for i in range(4):
        (text / f"{i}.txt").write_text(f"the quick brown fox {i} jumps over the lazy dog. " * 400)
    return text
