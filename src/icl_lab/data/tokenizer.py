"""Tokenizers for natural text, all offline: bytes, characters, a byte-level BPE trained locally
with HF `tokenizers` (vocab 256-8192), and the real GPT-2 BPE (r50k_base) read from the
`gpt2.tiktoken` file that the `openai-whisper==20250625` source archive ships (its sha256 is
checked against tiktoken's). A tokenizer saves to one JSON file, which goes into the run
directory, so a run decodes its tokens without the cache.

Example:
    >>> tok = get_tokenizer("bpe", 1024, corpus_dir("literary"))
    >>> tok.encode("To be, or not to be"), tok.token_strings(tok.encode("To be"))
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

from icl_lab.data.corpus import cache_dir, load_documents, manifest
from icl_lab.errors import DataError
from icl_lab.io import write_json, write_text

KINDS = ("byte", "char", "bpe", "gpt2")
EOT = "<|endoftext|>"
WHISPER = "openai-whisper==20250625"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base hash
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    """A tokenizer of one `kind`. Build one with `get_tokenizer` or `Tokenizer.load`.

    Attributes:
        kind: "byte", "char", "bpe" or "gpt2".
        vocab_size: number of token ids.
        eot: the end-of-text id that separates documents, or None (byte and char use "\\n\\n").
    """

    def __init__(self, kind: str, state: dict) -> None:
        self.kind, self.state = kind, state
        if kind == "byte":
            self.vocab_size, self.eot = 256, None
        elif kind == "char":
            self.chars = state["chars"]  # id 0 is <unk>
            self.index = {c: i for i, c in enumerate(self.chars)}
            self.vocab_size, self.eot = len(self.chars), None
        elif kind == "bpe":
            from tokenizers import Tokenizer as HFTokenizer

            self.hf = HFTokenizer.from_str(state["hf"])
            self.vocab_size, self.eot = self.hf.get_vocab_size(), self.hf.token_to_id(EOT)
        elif kind == "gpt2":
            import tiktoken

            pairs = (line.split() for line in state["tiktoken_bpe"].splitlines() if line)
            ranks = {base64.b64decode(tok): int(rank) for tok, rank in pairs}
            if len(set(ranks.values())) != len(ranks) or not all(0 <= r < 50256 for r in ranks.values()) \
                    or any(bytes([b]) not in ranks for b in range(256)):  # tiktoken itself would panic (a Rust abort)
                raise DataError("tiktoken_bpe lacks a byte, or has repeated or out-of-range ranks")
            self.tt = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})
            self.vocab_size, self.eot = 50257, 50256
        else:
            raise DataError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "byte":
            return [list(t.encode("utf-8")) for t in texts]
        if self.kind == "char":
            return [[self.index.get(c, 0) for c in t] for t in texts]
        if self.kind == "bpe":
            return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]
        return self.tt.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        if self.kind == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        if self.kind == "char":
            return "".join(self.chars[i] if i else "\ufffd" for i in ids)
        if self.kind == "bpe":
            return self.hf.decode(ids, skip_special_tokens=False)
        return self.tt.decode(ids)

    def token_strings(self, ids: list[int]) -> list[str]:
        """One display string per token (for attention viewers)."""
        if self.kind == "char":
            return [self.chars[i] if i else "<unk>" for i in ids]
        if self.kind == "byte":
            return [chr(i) if 32 <= i < 127 else f"\\x{i:02x}" for i in ids]
        return [self.decode([i]) for i in ids]

    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(json.dumps({"kind": self.kind, **self.state}, sort_keys=True).encode()).hexdigest()[:32]

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"kind": self.kind, **self.state})

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer file written by `save`.

        Raises:
            DataError: the file is missing, or damaged (not JSON, or not a tokenizer of its kind).
        """
        fix = "restore it, or delete it to have it trained again (a run's own: train or import the run again)"
        try:
            state = json.loads(Path(path).read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataError(f"cannot read tokenizer {path} ({(str(e).splitlines() or [''])[0][:80]}); {fix}") from None
        problem = _state_problem(state)
        if problem is None:
            try:
                return cls(state.pop("kind"), state)
            except Exception as e:  # noqa: BLE001 - the HF and tiktoken parsers raise bare Exception on bad input
                problem = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:60]}"
        raise DataError(f"tokenizer {path} is damaged ({problem}); {fix}")


def _state_problem(state) -> str | None:
    """Why a tokenizer file's JSON is not a tokenizer's state, or None."""
    if not isinstance(state, dict) or state.get("kind") not in KINDS:
        return "no known kind"
    field = {"char": "chars", "bpe": "hf", "gpt2": "tiktoken_bpe"}.get(state["kind"])
    if field is None:
        return None
    value = state.get(field)
    if state["kind"] == "char":
        ok = isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)
    else:
        ok = isinstance(value, str)
    return None if ok else f"{field} is missing or malformed"


def _train_bpe(corpus: Path, vocab_size: int) -> dict:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if not 256 <= vocab_size <= 8192:
        raise DataError(f"a locally trained BPE needs a vocab of 256-8192, not {vocab_size}; set model.d_vocab in that range")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # the 256 byte symbols are the initial alphabet, so the vocab must leave room for merges beyond them
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(load_documents(corpus, "train"), trainer=trainer)
    return {"hf": tok.to_str()}


def _chars(corpus: Path, vocab_size: int) -> dict:
    counts = Counter()
    for doc in load_documents(corpus, "train"):
        counts.update(doc)
    return {"chars": ["<unk>", *sorted(c for c, _ in counts.most_common(vocab_size - 1))]}


def gpt2_tiktoken_file() -> Path:
    """The GPT-2 BPE ranks file, taken once from the openai-whisper source archive into the cache."""
    path = cache_dir() / "tokenizers" / "gpt2.tiktoken"
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(prefix="icl-lab-whisper-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", "-d", tmp, WHISPER],
                              capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if done.returncode or not archives:
            raise DataError(f"could not download {WHISPER} for the GPT-2 tokenizer; check the network to PyPI")
        with tarfile.open(archives[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken")), None)
            if member is None:
                raise DataError(f"{WHISPER} has no whisper/assets/gpt2.tiktoken")
            data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != GPT2_SHA256:
        raise DataError("gpt2.tiktoken does not match tiktoken's r50k_base hash; the archive changed")
    return write_text(path, data.decode("ascii"))


def get_tokenizer(kind: str, vocab_size: int, corpus: Path, file: str = "") -> Tokenizer:
    """The tokenizer `kind` for `corpus` with at most `vocab_size` ids, trained (BPE, char) or
    fetched (GPT-2) once and cached.

    Raises:
        DataError: an unknown kind, or a vocab size the kind cannot have.
    """
    if file:  # a model's own tokenizer, saved with it
        return Tokenizer.load(file)
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "byte":
        if vocab_size < 256:
            raise DataError(f"the byte tokenizer has 256 tokens but model.d_vocab={vocab_size}; set d_vocab=256")
        return Tokenizer("byte", {})
    if kind == "gpt2":
        if vocab_size < 50257:
            raise DataError(f"the GPT-2 tokenizer has 50257 tokens but model.d_vocab={vocab_size}; set d_vocab=50257")
        return Tokenizer("gpt2", {"tiktoken_bpe": gpt2_tiktoken_file().read_text()})
    fp = manifest(corpus)["fingerprint"].split(":")[1][:16]
    path = cache_dir() / "tokenizers" / f"{fp}-{kind}-{vocab_size}.json"
    if not path.is_file():
        state = _train_bpe(corpus, vocab_size) if kind == "bpe" else _chars(corpus, vocab_size)
        Tokenizer(kind, state).save(path)
    return Tokenizer.load(path)
