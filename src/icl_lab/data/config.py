"""`DataConfig`: what the model is trained on. The core kinds are listed here; a model organism
(`icl_lab.kinds`) adds its kind and owns the config section named after it (`data.<kind>`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from icl_lab._config import FrozenConfig, one_line
from icl_lab.kinds import organism, organisms

CORE_KINDS = ("repeated", "uniform", "text", "translation", "fuzzy", "pattern", "mixture")


class DataConfig(FrozenConfig):
    """What the model reads: synthetic in-context sequences, or natural text.

    Attributes:
        kind: "repeated" — after a BOS token and a random-length prefix of random tokens, a random
            segment repeats until the context ends, with a fresh period and offset per sequence, so
            only an induction-style "find the earlier copy" mechanism predicts the repeats (a fixed
            period would let a positional "look back k" head solve it). "uniform" — i.i.d. random
            tokens, the no-ICL control. "text" — random windows of a tokenized corpus.
            "translation", "fuzzy", "pattern" — in-context tasks whose copy is not the literal
            token, and "mixture" — those three plus "repeated", one per sequence
            (`icl_lab.data.tasks`; they always start with BOS and have no random prefix).
            An organism's kind (`icl_lab.organisms`: "oocr", "modular", ...) — its task, described
            by the section `data.<kind>`.
        min_period, max_period: range of the repeated segment's length (inclusive).
        max_offset: the random prefix before the first copy has 0..max_offset tokens.
        bos: start every synthetic sequence with token 0 (then content tokens are 1..d_vocab-1).
        corpus: for "text": "literary" (Shakespeare, Milton, the King James Bible), "technical"
            (Debian's Python, PostgreSQL, Linux and Perl docs, the Jargon File, fortunes),
            "bundled" (both), a .txt/.md file or folder, or hf:PATH (a `save_to_disk` dataset).
        tokenizer: for "text": "byte", "char", "bpe" (trained locally with vocab model.d_vocab)
            or "gpt2" (the real GPT-2 BPE; d_vocab 50257).
        tokenizer_file: a saved icl-lab tokenizer JSON to use as is instead of building one (an
            imported model's own tokenizer).
        bos_id: the token that starts every text window (`prepend_bos`); None means the
            tokenizer's end-of-text id (`Tokenizer.eot`; byte and char tokenizers have none, so
            their windows start with text). Synthetic sequences always use token 0 (`bos`), so
            for other kinds it must be None or 0. Imports set it from the model's own files.
        prepend_bos: for "text": put the BOS token at position 0 of every window, followed by
            n_ctx - 1 text tokens, in training and evaluation alike (as TransformerLens's
            prepend_bos). `icl_lab.data.text.bos_token` resolves the id.
        <kind>: an organism's task section (e.g. `data.oocr`, `data.modular`), parsed by the
            organism's config class; present exactly when `kind` is that organism (filled with
            its defaults when omitted). A section of another organism is refused unless it holds
            only defaults (configs written before the organisms moved carry every section; those
            are dropped).
        boost: for "text": the share of *training* windows in which a span of 8-24 tokens repeats
            later in the same window (`icl_lab.data.text.boost_windows`): an augmentation that
            strengthens the induction signal while every token stays natural text. Validation
            text, and so every measurement, is never boosted. Runs that use it are named
            `*-boost-*` (docs/natural-phase-change.md).
        eval_ctx: length of the evaluation windows `analyze` uses; 0 means model.n_ctx (imported
            models with long contexts evaluate at 512, as Olsson et al.).
    """

    # organisms' sections are the only extra fields, each checked by `_sections`
    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str = "repeated"
    min_period: int = Field(default=4, ge=1)
    max_period: int = Field(default=20, ge=1)
    max_offset: int = Field(default=16, ge=0)
    bos: bool = True
    corpus: str = "literary"
    tokenizer: Literal["byte", "char", "bpe", "gpt2"] = "bpe"
    tokenizer_file: str = ""
    boost: float = Field(default=0.0, ge=0.0, le=1.0)
    eval_ctx: int = Field(default=0, ge=0)
    bos_id: int | None = Field(default=None, ge=0)
    prepend_bos: bool = True
    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        kind = data.get("kind", "repeated")
        if not isinstance(kind, str) or (kind not in CORE_KINDS and organism(kind) is None):
            known = ", ".join((*CORE_KINDS, *(o.kind for o in organisms())))
            raise ValueError(f"kind: unknown data kind {kind!r}; choose one of {known}")
        if organism(kind) is not None:
            data.setdefault(kind, {})
        for key in [k for k in data if k not in cls.model_fields]:
            org = organism(key)
            if org is None:
                raise ValueError(f"{key}: unknown field; remove it or check its spelling")
            section = _parse_section(org.config, data[key], key)
            if key != kind:
                if section != org.config():
                    raise ValueError(f"{key}: applies to data.kind={key} runs only; set data.kind={key} or drop it")
                del data[key]
                continue
            data[key] = section
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.min_period > self.max_period:
            raise ValueError(
                f"min_period={self.min_period} exceeds max_period={self.max_period}; swap or widen them"
            )
        if self.kind != "text" and self.bos_id not in (None, 0):
            raise ValueError(
                f"bos_id={self.bos_id} applies to text runs only; {self.kind} sequences start with token 0 "
                "(set data.bos=false to drop it)"
            )
        if self.boost and self.kind != "text":
            raise ValueError(f"data.boost={self.boost} applies to text runs only; set data.kind=text or drop boost")
        return self


def _parse_section(config: type, value: Any, key: str) -> BaseModel:
    if isinstance(value, config):
        return value
    try:
        return config.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
    except ValidationError as e:
        raise ValueError(one_line(e, key).replace(f"invalid {key}: ", f"{key}.", 1)) from None
