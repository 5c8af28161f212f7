"""`icl_lab.load_model` on every source kind: a run directory (any step), a checkpoint file, a
Hugging Face folder with its tokenizer.json (logits equal `transformers`), a folder of revisions, a
GGUF file, a built-in name (its download stubbed), and an imported run; the tokenizer and BOS come
attached, and bad sources fail in one line. Nothing is downloaded."""

import pytest
import torch

import icl_lab
from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.pretrained import import_model
from tests.pretrained.gguf_fixture import write_gguf
from tests.pretrained.test_hf_tokenizer import _llama, _tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 20, "warmup_steps": 5, "n_checkpoints": 3})
    return icl_lab.train(cfg, out=tmp_path_factory.mktemp("load") / "run").path


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device, sa[k].dtype)) for k in sa)


def test_a_run_directory_at_any_step(run_dir):
    run = icl_lab.load_run(run_dir)
    model = icl_lab.load_model(run_dir)
    assert _same_weights(model, run.model()) and not model.training
    first = icl_lab.load_model(str(run_dir), step=run.checkpoints[0])
    assert _same_weights(first, run.model(run.checkpoints[0])) and not _same_weights(first, model)
    assert model.tokenizer is None and model.bos_id == 0  # synthetic: token ids only, sequences start with 0
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        icl_lab.load_model(run_dir, step=7)


def test_a_checkpoint_file_dtype_and_device(run_dir):
    run = icl_lab.load_run(run_dir)
    step = run.checkpoints[1]
    model = icl_lab.load_model(run.layout.checkpoint(step), dtype="bf16", device="cpu")
    assert model.W_E.dtype == torch.bfloat16 and _same_weights(run.model(step).to(torch.bfloat16), model)
    with pytest.raises(ConfigError, match=f"step=0 contradicts the checkpoint file step_{step:07d}.safetensors"):
        icl_lab.load_model(run.layout.checkpoint(step), step=0)
    with pytest.raises(ConfigError, match="unknown dtype 'int3'; choose one of fp32"):
        icl_lab.load_model(run_dir, dtype="int3")


def test_a_hugging_face_folder_with_its_tokenizer(tmp_path):
    folder = _llama(tmp_path / "hf", bos_token_id=2)
    _tokenizer().save(str(folder / "tokenizer.json"))
    model = icl_lab.load_model(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = model.to_tokens("the quick brown fox jumps over the lazy dog")
    assert tokens[0, 0] == 2 and tokens.shape == (1, 10)
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-4
    assert model.to_string(tokens[0, 1:]) == "the quick brown fox jumps over the lazy dog"
    assert model.to_str_tokens(tokens)[:3] == ["<s>", "the", "quick"]
    with pytest.raises(ConfigError, match="step= applies to run directories and folders of step"):
        icl_lab.load_model(folder, step=3)


def test_a_folder_of_revisions_picks_the_step(tmp_path):
    for step, seed in ((0, 0), (1000, 1)):
        _llama(tmp_path / "revs" / f"step{step}", seed=seed)
    latest, first = icl_lab.load_model(tmp_path / "revs"), icl_lab.load_model(tmp_path / "revs", step=0)
    assert not _same_weights(latest, first)
    assert _same_weights(latest, icl_lab.load_model(tmp_path / "revs" / "step1000"))
    assert latest.tokenizer is None  # no tokenizer.json: token ids only
    with pytest.raises(CheckpointError, match=r"no revision step5 in .*; found steps \[0, 1000\]"):
        icl_lab.load_model(tmp_path / "revs", step=5)


def test_a_gguf_file_and_a_built_in_name(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf")
    model = icl_lab.load_model(path)
    assert model.bos_id == 0 and model.to_tokens("hi").tolist() == [[0, 257]]
    assert model.to_string(model.generate(model.to_tokens("hi"), 3, temperature=0)[0, 1:]).startswith("hi")
    asked = []
    monkeypatch.setattr("icl_lab.pretrained.load.builtin_model", lambda name: asked.append(name) or path)
    assert _same_weights(icl_lab.load_model("smollm2-135m"), model) and asked == ["smollm2-135m"]


def test_an_imported_run_keeps_its_tokenizer(tmp_path):
    folder = _llama(tmp_path / "hf", bos_token_id=2)
    _tokenizer().save(str(folder / "tokenizer.json"))
    run = import_model(folder, tmp_path / "run")
    model = icl_lab.load_model(run.path)
    assert model.bos_id == 2 and model.to_tokens("the dog").tolist() == [[2, 3, 10]]
    assert _same_weights(model, icl_lab.load_model(folder))


def test_bad_sources_fail_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere not found; pass a run directory, a checkpoint file, .* name \\(smollm2-135m\\)"):
        icl_lab.load_model("nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json, checkpoints/ or step\\*/ revisions"):
        icl_lab.load_model(tmp_path / "empty")
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a checkpoint inside a run"):
        icl_lab.load_model(tmp_path / "w.safetensors")
