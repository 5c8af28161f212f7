"""Tokenized text: the induction-target mask, windows, streams, and a text run end to end."""

import numpy as np
import pytest
import torch

import icl_lab
from icl_lab.data import DataConfig, TextStream, Tokenizer, bos_token, load_tokens, repeat_mask, sample_windows
from icl_lab.data.corpus import load_documents
from icl_lab.errors import ConfigError, DataError


@pytest.fixture
def corpus_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    gen = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    for i in range(30):
        (src / f"{i}.txt").write_text(" ".join(gen.choice(words, 400)) + f" end of {i}.")
    return src


def test_repeat_mask_marks_targets_an_induction_head_predicts():
    a, b, c, d = 1, 2, 3, 4
    tokens = torch.tensor([[a, b, c, a, b, d, a, c]])
    # targets: b c a b d a c -> only "a b" (i=3) repeats an earlier bigram; "a c" (i=6) does not
    assert repeat_mask(tokens).tolist() == [[False, False, False, True, False, False, False]]
    assert repeat_mask(torch.tensor([[5, 5, 5, 5]])).tolist() == [[False, True, True]]


def test_windows_start_with_bos_and_the_repeat_mask_reads_only_the_text():
    # one possible start (len(data) - text length == 1), so the window is data[:n_ctx - 1]
    data = np.array([2, 3, 9, 2, 3, 5], dtype=np.uint16)
    batch = sample_windows(data, 6, 2, torch.Generator().manual_seed(0), bos=9)
    assert batch.tokens.tolist() == [[9, 2, 3, 9, 2, 3]] * 2
    # targets 2 3 9 2 3: predicting the first text token from BOS is a target, never a repeat;
    # "2 3" repeats the text's first bigram; "9 2" does not, as BOS at position 0 is not text
    assert batch.repeat_mask.tolist() == [[False, False, False, False, True]] * 2
    assert repeat_mask(batch.tokens)[0].tolist() == [False, False, False, True, True]  # what counting BOS would give
    assert batch.loss_mask is None  # every target is learned, the first text token's too
    # without BOS: n_ctx text tokens, as before
    plain = sample_windows(data, 5, 1, torch.Generator().manual_seed(0))
    assert plain.tokens.tolist() == [[2, 3, 9, 2, 3]] and plain.repeat_mask.tolist() == [[False, False, False, True]]
    with pytest.raises(DataError, match="fewer than n_ctx=8"):
        sample_windows(data, 8, 1, torch.Generator(), bos=9)


def test_bos_token_resolves_one_id_per_config():
    bpe = Tokenizer("bpe", {"hf": _wordlevel(["<|endoftext|>", "a", "b"])})
    text = DataConfig(kind="text")
    assert bpe.eot == 0 and bos_token(text, bpe) == 0  # the tokenizer's end-of-text
    assert bos_token(text.replace(bos_id=2), bpe) == 2
    assert bos_token(text.replace(bos_id=2, prepend_bos=False), bpe) is None
    assert bos_token(text, Tokenizer("byte", {})) is None  # bytes have no end-of-text token
    with pytest.raises(DataError, match=r"data.bos_id=3 is not a token of the 3-token tokenizer; set data.bos_id"):
        bos_token(text.replace(bos_id=3), bpe)
    assert bos_token(DataConfig()) == 0 and bos_token(DataConfig(bos=False)) is None
    assert bos_token(DataConfig(kind="translation", bos=False)) == 0  # the tasks always start with BOS
    with pytest.raises(ConfigError, match="bos_id=5 applies to text runs only"):
        DataConfig.parse({"kind": "repeated", "bos_id": 5})


def _wordlevel(words: list[str]) -> str:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok.to_str()


def test_tokens_are_the_documents_joined(corpus_dir):
    cfg = DataConfig(kind="text", corpus=str(corpus_dir), tokenizer="byte")
    ts = load_tokens(cfg, d_vocab=256)
    assert ts.train.dtype == np.uint16 and not ts.train.flags.writeable
    joined = "".join(doc + "\n\n" for doc in load_documents(ts.corpus, "train"))
    assert ts.tokenizer.decode(ts.train.tolist()) == joined
    assert load_tokens(cfg, d_vocab=256).fingerprint == ts.fingerprint  # cached and stable
    with pytest.raises(DataError, match="set d_vocab=256"):
        load_tokens(cfg, d_vocab=100)


def test_windows_and_stream_state(corpus_dir):
    cfg = DataConfig(kind="text", corpus=str(corpus_dir), tokenizer="byte")
    stream = TextStream(cfg, 256, 32, 4, seed=1)
    state = stream.get_state()
    first = stream.next()
    assert first.tokens.shape == (4, 32) and first.repeat_mask.shape == (4, 31)
    stream.set_state(state)
    assert torch.equal(stream.next().tokens, first.tokens)
    with pytest.raises(DataError, match="fewer than n_ctx"):
        sample_windows(np.zeros(10, np.uint16), 32, 1, torch.Generator())
    # with a BOS id every training window starts with it, and the fingerprint says so
    bos = TextStream(cfg.replace(bos_id=0), 256, 32, 4, seed=1)
    batch = bos.next()
    assert (batch.tokens[:, 0] == 0).all() and batch.tokens.shape == (4, 32) and batch.repeat_mask.shape == (4, 31)
    assert bos.fingerprint(1) != stream.fingerprint(1) == stream.tokens.fingerprint


def test_a_text_run_end_to_end(corpus_dir, tmp_path):
    cfg = icl_lab.ExperimentConfig.parse(dict(
        name="text", model=dict(n_layers=2, d_model=32, n_heads=2, d_vocab=256, n_ctx=32),
        data=dict(kind="text", corpus=str(corpus_dir), tokenizer="byte"),
        train=dict(steps=40, batch_size=8, warmup_steps=5, n_checkpoints=6, log_every=5)))
    run = icl_lab.train(cfg, out=tmp_path / "run")
    assert run.tokenizer().kind == "byte" and run.meta["data_fingerprint"].startswith("sha256:")
    log = run.log
    assert log.loss.iloc[-1] < log.loss.iloc[0] and np.isfinite(log.loss_repeat).any()
    # resuming a text run from a middle checkpoint is bit-identical
    half = icl_lab.train(cfg.replace(train={"steps": 20}), out=tmp_path / "half")
    (half.path / "config.json").write_text((run.path / "config.json").read_text())
    resumed = icl_lab.train(cfg, out=tmp_path / "half", resume=True)
    assert torch.equal(resumed.model().W_E, run.model().W_E)
    summary = icl_lab.analyze([run], n_examples=16)[str(run.path)]
    assert np.isfinite(summary["icl_score"]["final"])
    from icl_lab.run.results import read_attention

    sample = read_attention(run).samples[1]  # the viewer shows decoded validation text
    assert sample["name"].startswith("validation text") and set("".join(sample["tokens"])) <= set("abcdefghijklmnopqrstuvwxyz .0123456789")


def test_boost_repeats_a_natural_span_at_a_varying_gap():
    from icl_lab.data.text import BOOST_SPAN, boost_windows

    text = torch.arange(1000, 1063).repeat(400, 1)  # distinct tokens per row: any repeat is the boost's
    out = boost_windows(text, 0.5, torch.Generator().manual_seed(0))
    changed = (out != text).any(1)
    assert 0.4 < changed.float().mean() < 0.6  # about the share asked for
    gaps = set()
    for row in out[changed]:
        values, counts = row.unique(return_counts=True)
        repeated = values[counts > 1]
        assert BOOST_SPAN[0] <= len(repeated) <= BOOST_SPAN[1]  # one span of 8-24 tokens, copied once
        where = [(row == v).nonzero().flatten().tolist() for v in repeated]
        assert len({b - a for a, b in where}) == 1  # the copy keeps the span's order
        gaps.add(where[0][1] - where[0][0])
    assert len(gaps) > 10  # the gap varies, so no fixed look-back head solves it
    assert set(out.flatten().tolist()) <= set(text.flatten().tolist())  # every token is still text
    assert torch.equal(boost_windows(text, 0.0, torch.Generator()), text)


def test_boost_touches_training_windows_only(corpus_dir):
    cfg = DataConfig(kind="text", corpus=str(corpus_dir), tokenizer="byte", boost=1.0)
    boosted = TextStream(cfg, 256, 64, 64, seed=1).next()
    plain = TextStream(cfg.replace(boost=0.0), 256, 64, 64, seed=1).next()
    # the same windows (their starts are drawn first), each with a span copied over later text
    assert (boosted.tokens != plain.tokens).any(1).float().mean() > 0.8
    assert torch.equal(boosted.tokens[:, :1], plain.tokens[:, :1])
    with pytest.raises(ConfigError, match="data.boost=0.5 applies to text runs only"):
        icl_lab.get_preset("synthetic-2l").replace(data={"boost": 0.5})


def test_a_boosted_run_is_measured_on_unboosted_text(corpus_dir, tmp_path):
    from icl_lab.measure.evalset import make_eval_set

    base = dict(model=dict(n_layers=1, d_model=16, n_heads=1, d_vocab=256, n_ctx=32),
                train=dict(steps=2, batch_size=2, warmup_steps=1, n_checkpoints=2, log_every=1))
    runs = [icl_lab.train(icl_lab.ExperimentConfig.parse(dict(
        name=f"b{boost}", data=dict(kind="text", corpus=str(corpus_dir), tokenizer="byte", boost=boost), **base)),
        out=tmp_path / f"b{boost}") for boost in (0.0, 1.0)]
    assert runs[1].config.data.boost == 1.0
    assert make_eval_set(runs[0], 16).fingerprint == make_eval_set(runs[1], 16).fingerprint


def test_a_long_window_gets_one_boosted_span_per_64_tokens():
    from icl_lab.data.text import BOOST_EVERY, BOOST_SPAN, boost_windows

    text = torch.arange(1000, 1255).repeat(50, 1)  # 255 distinct tokens per row
    out = boost_windows(text, 1.0, torch.Generator().manual_seed(1))
    copied = [(row.unique(return_counts=True)[1] > 1).sum().item() for row in out]
    assert 255 // BOOST_EVERY == 3 and all(c >= BOOST_SPAN[0] for c in copied)
    assert sum(copied) / len(copied) > BOOST_SPAN[1]  # more than one span's worth per window, on average
