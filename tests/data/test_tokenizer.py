"""Tokenizers: round trips, saving into a run, vocab checks, and the real GPT-2 BPE."""

import pytest

from icl_lab.data.corpus import user_corpus
from icl_lab.data.tokenizer import Tokenizer, get_tokenizer
from icl_lab.errors import DataError

TEXT = "To be, or not to be: that is the question. Ünïcödé, tabs\tand\nnewlines."


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"{i}.txt").write_text(f"{TEXT} Verse {i}: whether 'tis nobler in the mind to suffer.\n" * 20)
    return user_corpus(str(src))


@pytest.mark.parametrize("kind, vocab", [("byte", 256), ("char", 64), ("bpe", 300)])
def test_round_trip_and_reload(kind, vocab, corpus, tmp_path):
    tok = get_tokenizer(kind, vocab, corpus)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and max(ids) < tok.vocab_size <= vocab
    assert len(tok.token_strings(ids)) == len(ids)
    again = Tokenizer.load(tok.save(tmp_path / "tokenizer.json"))
    assert again.encode(TEXT) == ids and again.fingerprint() == tok.fingerprint()
    assert tok.encode_batch([TEXT, "be"]) == [ids, tok.encode("be")]


def test_bpe_merges_frequent_words(corpus):
    tok = get_tokenizer("bpe", 400, corpus)
    assert len(tok.encode(" whether 'tis nobler")) < 8  # far fewer than its 20 bytes
    assert tok.eot == 0 and tok.token_strings([tok.eot]) == ["<|endoftext|>"]


def test_char_tokenizer_maps_unseen_characters_to_unk(corpus):
    tok = get_tokenizer("char", 64, corpus)
    assert tok.encode("€")[0] == 0 and tok.token_strings([0]) == ["<unk>"]


@pytest.mark.parametrize("kind, vocab, match", [("byte", 128, "set d_vocab=256"), ("bpe", 100, "vocab of 256-8192"),
                                                ("gpt2", 1000, "set d_vocab=50257"), ("word", 10, "unknown tokenizer 'word'")])
def test_vocab_mismatch_is_a_clear_error(kind, vocab, match, corpus):
    with pytest.raises(DataError, match=match):
        get_tokenizer(kind, vocab, corpus)


def test_gpt2_bpe_from_the_whisper_archive_matches_known_ids(corpus):
    """The real GPT-2 ids (r50k_base), e.g. "Hello world" = [15496, 995]; the file's sha256 is
    checked against tiktoken's before use."""
    try:
        tok = get_tokenizer("gpt2", 50257, corpus)
    except DataError as e:
        if "could not download" in str(e):
            pytest.skip(str(e))
        raise
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262] and tok.eot == 50256
    assert tok.decode(tok.encode(TEXT)) == TEXT
