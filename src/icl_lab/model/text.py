"""Text in and out of a `Transformer`, with TransformerLens's method names: `to_tokens`,
`to_str_tokens`, `to_string` and `generate`. They use the tokenizer and BOS id that
`icl_lab.load_model` attaches to the model (`model.tokenizer`, `model.bos_id`); a synthetic model
has neither and works on token ids only. Texts of unequal length are left-padded, so every row's
last token sits at the last position (what `generate` continues), and come with an attention
mask that the model's forward honours.

Example:
    >>> tokens, mask = model.to_tokens(["The cat sat", "A dog"], return_mask=True)
    >>> model.logits(tokens, mask)[:, -1]                   # next-token logits of both texts
    >>> model.to_string(model.generate(model.to_tokens("Once upon a"), 10, temperature=0))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from jaxtyping import Int, Shaped
from torch import Tensor

from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import ConfigError
from icl_lab.model.attention import KVCache

TokensAndMask = tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]


class TextMixin:
    """Text methods of `Transformer` (a mixin: it reads `cfg`, `W_E`, `tokenizer` and `bos_id`)."""

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer (a synthetic model?); pass token ids, "
                              "or load a text model with icl_lab.load_model")
        return self.tokenizer

    def _bos(self, prepend_bos: bool | None) -> int | None:
        if prepend_bos and self.bos_id is None:
            raise ConfigError("this model has no BOS token; call to_tokens(..., prepend_bos=False)")
        return None if prepend_bos is False else self.bos_id

    def to_tokens(
        self, text: str | Sequence[str], prepend_bos: bool | None = None, return_mask: bool = False,
    ) -> Union[Int[Tensor, "batch pos"], TokensAndMask]:
        """Token ids [batch, pos] of one text or a list of texts, on the model's device.

        Args:
            text: a string (batch 1) or a list of strings.
            prepend_bos: put `model.bos_id` first; None (default) does so when the model has one.
            return_mask: also return the attention mask [batch, pos] (1 at real tokens, 0 at the
                left padding) that the model's forward takes as `attention_mask`.

        Returns:
            tokens, or (tokens, attention_mask) with `return_mask`. Padding uses the BOS id (else
            the end-of-text id, else 0); only the mask tells it from real tokens.

        Raises:
            ConfigError: no tokenizer, no text, a text longer than n_ctx, or texts of unequal
                length without `return_mask` (their padding would be read as tokens).
        """
        tok = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError("to_tokens takes a string or a non-empty list of strings")
        bos = self._bos(prepend_bos)
        rows = [([] if bos is None else [bos]) + ids for ids in tok.encode_batch(texts)]
        n_pos = max(len(r) for r in rows)
        if min(len(r) for r in rows) == 0:
            raise ConfigError("an empty text has no tokens; pass non-empty text or prepend_bos=True")
        if n_pos > self.cfg.n_ctx:
            raise ConfigError(f"a text has {n_pos} tokens, more than n_ctx={self.cfg.n_ctx}; shorten it")
        if not return_mask and len({len(r) for r in rows}) > 1:
            raise ConfigError("texts of unequal length need padding; call to_tokens(texts, return_mask=True) "
                              "and pass the mask as attention_mask")
        pad = next((i for i in (bos, tok.eot) if i is not None), 0)
        tokens = torch.full((len(rows), n_pos), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n_pos), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every text ends at the last position
            tokens[i, n_pos - len(row):] = torch.tensor(row)
            mask[i, n_pos - len(row):] = 1
        device = self.W_E.device
        return (tokens.to(device), mask.to(device)) if return_mask else tokens.to(device)

    def to_str_tokens(self, tokens: str | Shaped[Tensor, "..."] | Sequence[int], prepend_bos: bool | None = None) -> list:
        """One display string per token: a list for a text, a 1-D tensor or a [1, pos] tensor;
        a list of lists for a [batch, pos] tensor.

        Raises:
            ConfigError: no tokenizer, or a tensor with more than two axes.
        """
        tok = self._need_tokenizer()
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens, prepend_bos=prepend_bos)
        ids = torch.as_tensor(tokens)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim > 2:
            raise ConfigError(f"to_str_tokens takes [pos] or [batch, pos] tokens, got shape {tuple(ids.shape)}")
        if ids.ndim == 2:
            return [tok.token_strings(row.tolist()) for row in ids]
        return tok.token_strings(ids.reshape(-1).tolist())

    def to_string(self, tokens: Shaped[Tensor, "..."] | Sequence[int]) -> str | list[str]:
        """Decode tokens: [pos] (or a list of ids) -> a string, [batch, pos] -> a list of strings.
        Padding and BOS tokens are decoded like any other token.

        Raises:
            ConfigError: no tokenizer, or a tensor with more than two axes.
        """
        tok = self._need_tokenizer()
        ids = torch.as_tensor(tokens)
        if ids.ndim > 2:
            raise ConfigError(f"to_string takes [pos] or [batch, pos] tokens, got shape {tuple(ids.shape)}")
        if ids.ndim == 2:
            return [tok.decode(row.tolist()) for row in ids]
        return tok.decode(ids.reshape(-1).tolist())

    @torch.no_grad()  # not inference_mode: the tokens it returns must be usable where autograd is on
    def generate(
        self, tokens: Int[Tensor, "batch pos"], max_new_tokens: int = 20, temperature: float | int = 1.0,
        top_k: int | None = None, attention_mask: Shaped[Tensor, "batch pos"] | None = None, seed: int = 0,
        use_kv_cache: bool = True,
    ) -> Int[Tensor, "batch new_pos"]:
        """Continue every row of `tokens` by sampling `max_new_tokens` tokens.

        With the KV cache (the default), the prompt runs once and each new token runs alone,
        attending to the cached keys and values. Past n_ctx tokens the window slides, which moves
        every position, so from then on each token reruns the whole window (one full forward per
        token). Hooks attached meanwhile see the new tokens only.

        Args:
            tokens: [batch, pos] prompt ids (left-padded with `attention_mask` for unequal texts).
            max_new_tokens: how many tokens to add.
            temperature: softmax temperature; 0 is greedy (argmax).
            top_k: sample among the k most likely tokens only; None samples from all.
            attention_mask: the prompt's mask from `to_tokens(..., return_mask=True)`.
            seed: seed of the sampler (a generator of its own; the global RNG is untouched).
            use_kv_cache: False reruns the whole sequence for every token (the reference the
                cache is tested against).

        Returns:
            [batch, pos + max_new_tokens]: the prompt followed by the new tokens.

        Raises:
            ConfigError: a negative temperature or max_new_tokens, or top_k below 1.
        """
        if temperature < 0 or max_new_tokens < 0 or (top_k is not None and top_k < 1):
            raise ConfigError("generate needs temperature >= 0, max_new_tokens >= 0 and top_k >= 1 (or None)")
        device = self.W_E.device
        tokens = tokens.to(device)
        mask = torch.ones_like(tokens) if attention_mask is None else attention_mask.to(device).long()
        gen = torch.Generator(device=device).manual_seed(seed)
        n_ctx = self.cfg.n_ctx
        cache = KVCache(self.cfg.n_layers) if use_kv_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and tokens.shape[1] <= n_ctx:
                logits = self(tokens[:, cache.n_pos:], mask, kv_cache=cache)[:, -1]
            else:
                logits = self(tokens[:, -n_ctx:], mask[:, -n_ctx:])[:, -1]
            tokens = torch.cat([tokens, self._sample(logits.float(), temperature, top_k, gen)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return tokens

    @staticmethod
    def _sample(logits: Tensor, temperature: float | int, top_k: int | None, gen: torch.Generator) -> Tensor:
        """[batch, 1] next tokens from last-position logits [batch, d_vocab]."""
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=gen)
