"""The tokenizer half of `icl-lab export --format hf`: an icl-lab `Tokenizer` (or none, for a
synthetic model) as an HF `tokenizers` JSON that `transformers.AutoTokenizer` loads offline and
that encodes text to the same ids. Used by `icl_lab.pretrained.export_hf`.

- **bpe** (a locally trained byte-level BPE, or an imported model's own tokenizer): the run's
  `tokenizers` JSON, copied unchanged.
- **gpt2** (tiktoken's r50k_base ranks): a byte-level BPE with the same vocabulary; its merges are
  every split of a token into two tokens, ordered by the token's rank, with whole-token lookup first
  (`ignore_merges`), as transformers' own tiktoken converter builds them.
- **byte**: a byte-level BPE with the 256 bytes as its vocabulary and no merges.
- **char**: a BPE with the run's characters as its vocabulary and no merges; an unknown character is
  `<unk>` (id 0), as in icl-lab.
- **none** (synthetic runs): a word-level vocabulary `t0` ... `t{V-1}` split on whitespace, so
  `tok("t3 t17")` is `[3, 17]`. Every id is a data token, so no id is free for an unknown word: an
  unknown word becomes `t0` (id 0, the synthetic sequences' first token)."""

from __future__ import annotations

import base64
import json

from icl_lab.data.tokenizer import EOT, Tokenizer

UNK = "<unk>"


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def _byte_level(vocab: dict[str, int], merges: list[tuple[str, str]], regex: bool, ignore_merges: bool = False) -> str:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    tok = HFTokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def _from_tiktoken(tok: Tokenizer) -> str:
    """A byte-level BPE equal to the GPT-2 tiktoken ranks, with `<|endoftext|>` as its special token."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    pairs = (line.split() for line in tok.state["tiktoken_bpe"].splitlines() if line)
    ranks = {base64.b64decode(b): int(r) for b, r in pairs}
    alphabet = _byte_alphabet()

    def text(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    merges = sorted(((ranks[t], ranks[t[:i]], ranks[t[i:]]), text(t[:i]), text(t[i:]))
                    for t in ranks if len(t) > 1 for i in range(1, len(t)) if t[:i] in ranks and t[i:] in ranks)
    vocab = {text(b): r for b, r in ranks.items()} | {EOT: tok.eot}  # at its own id (50256), not the next free one
    hf = HFTokenizer.from_str(_byte_level(vocab, [(a, b) for _, a, b in merges], regex=True, ignore_merges=True))
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return hf.to_str()


def _from_chars(tok: Tokenizer) -> str:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    hf = HFTokenizer(models.BPE({c: i for i, c in enumerate(tok.chars)}, [], unk_token=tok.chars[0]))
    hf.decoder = decoders.Fuse()  # characters concatenate, not joined with spaces
    return hf.to_str()


def _word_level(d_vocab: int) -> str:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel({f"t{i}": i for i in range(d_vocab)}, unk_token="t0"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return hf.to_str()


def tokenizer_json(tok: Tokenizer | None, d_vocab: int) -> str:
    """The HF `tokenizers` JSON of `tok` (a word-level `t{i}` vocabulary when it is None)."""
    if tok is None:
        return _word_level(d_vocab)
    if tok.kind == "bpe":
        return tok.state["hf"]
    if tok.kind == "gpt2":
        return _from_tiktoken(tok)
    if tok.kind == "byte":
        return _byte_level({c: b for b, c in _byte_alphabet().items()}, [], regex=False)
    return _from_chars(tok)


def token_text(hf_json: str, token_id: int | None) -> str | None:
    """The string of `token_id` in a `tokenizers` JSON (None for None or an id it lacks)."""
    if token_id is None:
        return None
    from tokenizers import Tokenizer as HFTokenizer

    return HFTokenizer.from_str(hf_json).id_to_token(token_id)


def tokenizer_config(hf_json: str, bos_id: int | None, eot_id: int | None, n_ctx: int) -> dict:
    """tokenizer_config.json for `PreTrainedTokenizerFast`: the BOS and end-of-text tokens by name
    where the model has them. Whether `tok(text)` adds BOS is left to tokenizer.json (icl-lab's own
    tokenizers add nothing, as `Tokenizer.encode`)."""
    named = {"bos_token": token_text(hf_json, bos_id), "eos_token": token_text(hf_json, eot_id)}
    unk = {"unk_token": UNK} if UNK in json.loads(hf_json)["model"].get("vocab", {}) else {}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": n_ctx, "clean_up_tokenization_spaces": False,
            **{k: v for k, v in named.items() if v is not None}, **unk}


SAMPLE_TEXT = "The quick brown fox, 12 apples & 3.5 pears!\n\n  def f(x):\n\treturn x ** 2  # naïve café"
SAMPLE_IDS = (0, 1, 3, 17, 2)  # a synthetic model's sample: "t0 t1 t3 t17 t2", less the ids it lacks


def same_ids(tok: Tokenizer | None, hf_tokenizer, d_vocab: int) -> str | None:
    """Why `hf_tokenizer` (a transformers tokenizer) encodes a sample text differently from `tok`
    (a synthetic model's `t{i}` words when None); None if it agrees."""
    if tok is None:
        expected = [i for i in SAMPLE_IDS if i < d_vocab]
        text = " ".join(f"t{i}" for i in expected)
    else:
        text, expected = SAMPLE_TEXT, tok.encode(SAMPLE_TEXT)
    got = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    return None if got == expected else f"the exported tokenizer encodes {text[:20]!r}... as {got[:6]}..., the model's as {expected[:6]}..."
