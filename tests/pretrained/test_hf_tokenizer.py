"""An imported model keeps its own tokenizer and BOS: a small Llama folder with a WordLevel
tokenizer.json written here imports with that tokenizer and the folder's BOS id, its text windows
start with that BOS, and evaluating it on another tokenizer fails in one line. Nothing is
downloaded."""

import json
import shutil

import numpy as np
import pytest
import torch

from icl_lab.data import Tokenizer, load_tokens, sample_windows
from icl_lab.errors import CheckpointError, DataError
from icl_lab.pretrained import import_model
from icl_lab.run import check_eval_data, load_run
from tests.pretrained.gguf_fixture import TOKEN_HI, write_gguf

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "cat", "sleeps", "runs"]
SPECIALS = ["<unk>", "</s>", "<s>"]  # <s> is id 2, not Llama's default 1, so the folder's id must win


def _tokenizer(words=WORDS) -> "tokenizers.Tokenizer":
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    return tok


def _llama(folder, seed=0, **over):
    cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1,
                                   intermediate_size=48, vocab_size=64, max_position_embeddings=32, **over)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture
def texts(tmp_path):
    out = tmp_path / "texts"
    out.mkdir()
    gen = np.random.default_rng(0)
    for i in range(20):
        (out / f"{i}.txt").write_text(" ".join(gen.choice(WORDS, 200)))
    return out


def test_the_folder_tokenizer_and_bos_are_the_runs(tmp_path, texts):
    folder = _llama(tmp_path / "hf", bos_token_id=2)
    hf_tok = _tokenizer()
    hf_tok.save(str(folder / "tokenizer.json"))
    run = import_model(folder, tmp_path / "run", corpus=str(texts))

    assert run.meta["tokenizer_source"] == "tokenizer.json" and run.meta["bos_source"] == "config.json bos_token_id"
    assert run.config.data.bos_id == 2 and run.config.data.prepend_bos
    text = "the lazy dog sleeps and the quick cat runs"
    assert run.tokenizer().encode(text) == hf_tok.encode(text, add_special_tokens=False).ids
    tokens = load_tokens(run.config.data, run.config.model.d_vocab)
    assert tokens.tokenizer.fingerprint() == run.meta["tokenizer_fingerprint"] and tokens.bos == 2
    windows = sample_windows(tokens.val, 32, 4, torch.Generator().manual_seed(0), bos=tokens.bos).tokens
    assert (windows[:, 0] == 2).all() and (windows[:, 1:] >= len(SPECIALS)).all()  # BOS, then text only
    assert set(tokens.tokenizer.decode(windows[0, 1:].tolist()).split()) <= set(WORDS)
    check_eval_data(run)  # the evaluation text is the model's

    # the config names the tokenizer relative to the run, so the run can move
    assert json.loads(run.layout.config.read_text())["data"]["tokenizer_file"] == "tokenizer.json"
    moved = load_run(shutil.copytree(run.path, tmp_path / "moved"))
    assert moved.config.data.tokenizer_file == str(tmp_path / "moved" / "tokenizer.json")
    check_eval_data(moved)

    # data.tokenizer_file pointed at another tokenizer: the fix names the run's own file
    other = Tokenizer("bpe", {"hf": _tokenizer(WORDS[::-1]).to_str()}).save(tmp_path / "other.json")
    config = json.loads(run.layout.config.read_text())
    config["data"]["tokenizer_file"] = str(other)
    run.layout.config.write_text(json.dumps(config))
    pattern = r"^run was made with tokenizer sha256:\w+ but data.tokenizer_file \(.*other.json\) gives sha256:\w+; " \
              r"set data.tokenizer_file in its config.json to .*/run/tokenizer.json$"
    with pytest.raises(DataError, match=pattern):
        check_eval_data(load_run(run.path))
    # the run's tokenizer.json swapped for another: nothing in the run holds the right one any more
    config["data"]["tokenizer_file"] = str(run.layout.tokenizer.resolve())
    run.layout.config.write_text(json.dumps(config))
    run.layout.tokenizer.write_text(other.read_text())
    msg = r"^run was made with tokenizer .*; restore the tokenizer it was made with, or import or train it again$"
    with pytest.raises(DataError, match=msg):
        check_eval_data(load_run(run.path))


@pytest.mark.parametrize("where", ["tokenizer_config", "family"])
def test_without_a_bos_id_in_config_json_the_tokenizer_config_or_the_family_names_it(tmp_path, where):
    folder = _llama(tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config.pop("bos_token_id", None)
    (folder / "config.json").write_text(json.dumps(config))
    _tokenizer().save(str(folder / "tokenizer.json"))
    if where == "tokenizer_config":
        (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>", "special": True}}))
    run = import_model(folder, tmp_path / "run")
    expected = {"tokenizer_config": (2, "tokenizer_config.json bos_token"), "family": (1, "llama default")}[where]
    assert (run.config.data.bos_id, run.meta["bos_source"]) == expected


def test_revisions_read_the_first_revisions_tokenizer(tmp_path):
    for step in (0, 10):
        _llama(tmp_path / "revs" / f"step{step}", seed=step, bos_token_id=2)
    _tokenizer().save(str(tmp_path / "revs" / "step0" / "tokenizer.json"))
    run = import_model(tmp_path / "revs", tmp_path / "run")
    assert run.checkpoints == [0, 10] and run.meta["tokenizer_source"] == "step0/tokenizer.json"
    assert run.tokenizer().encode("fox dog") == [3 + WORDS.index("fox"), 3 + WORDS.index("dog")]


def test_without_tokenizer_json_the_fallback_is_recorded(tmp_path):
    folder = _llama(tmp_path / "hf", bos_token_id=2)
    run = import_model(folder, tmp_path / "run")
    assert run.meta["tokenizer_source"] == "fallback: bpe" and "tokenizer_fingerprint" not in run.meta
    # a locally trained BPE shares no ids with the model: its own end-of-text is the BOS
    assert run.config.data.bos_id is None and run.meta["bos_source"] == "the tokenizer's end-of-text"
    assert run.config.data.tokenizer_file == "" and run.tokenizer() is None
    check_eval_data(run)  # nothing recorded to compare: passes without building the text
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(CheckpointError, match=r"tokenizer.json is not a readable `tokenizers` file \(.*\); upgrade `tokenizers`, "
                                              r"or remove the file to import with a fallback tokenizer$"):
        import_model(folder, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # read before any weights are written


def test_a_gguf_file_gives_its_tokenizer_and_bos(tmp_path):
    """SmolLM2's layout: a byte-level BPE in the metadata, BOS 0 = <|endoftext|>."""
    write_gguf(tmp_path / "m.gguf")
    run = import_model(tmp_path / "m.gguf", tmp_path / "run")
    assert run.meta["tokenizer_source"] == "gguf" and run.meta["bos_source"] == "tokenizer.ggml.bos_token_id"
    assert run.config.data.bos_id == 0 and run.tokenizer().eot == 0
    assert run.tokenizer().encode("hi") == [TOKEN_HI]
