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
from typing import Literal, Union

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor
from tqdm.auto import tqdm

from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import ConfigError
from icl_lab.model.attention import KVCache

TokensAndMask = tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]
PaddingSide = Literal["left", "right"]


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
        padding_side: PaddingSide | None = None,
    ) -> Union[Int[Tensor, "batch pos"], TokensAndMask]:
        """Token ids [batch, pos] of one text or a list of texts, on the model's device.

        Args:
            text: a string (batch 1) or a list of strings.
            prepend_bos: put `model.bos_id` first; None (default) does so when the model has one.
            return_mask: also return the attention mask [batch, pos] (1 at real tokens, 0 at the
                padding) that the model's forward takes as `attention_mask`.
            padding_side: "left" (the default here: every text ends at the last position, which
                `generate` continues) or "right" (TransformerLens's default: every text starts at
                position 0, so a causal model needs no mask for its real tokens).

        Returns:
            tokens, or (tokens, attention_mask) with `return_mask`. Padding uses the BOS id (else
            the end-of-text id, else 0); only the mask tells it from real tokens.

        Raises:
            ConfigError: no tokenizer, no text, a text longer than n_ctx, or texts of unequal
                length left-padded without `return_mask` (their padding would be read as tokens).
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
        if padding_side not in (None, "left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        right = padding_side == "right"
        if not return_mask and not right and len({len(r) for r in rows}) > 1:
            raise ConfigError("texts of unequal length need padding; call to_tokens(texts, return_mask=True) and pass the mask "
                              "as attention_mask, or padding_side='right'")
        pad = next((i for i in (bos, tok.eot) if i is not None), 0)
        tokens = torch.full((len(rows), n_pos), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n_pos), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every text ends at the last position
            at = slice(0, len(row)) if right else slice(n_pos - len(row), n_pos)
            tokens[i, at] = torch.tensor(row)
            mask[i, at] = 1
        device = self.W_E.device
        return (tokens.to(device), mask.to(device)) if return_mask else tokens.to(device)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token.

        Raises:
            ConfigError: no tokenizer, or the string is not one token (it names how many).
        """
        ids = self._need_tokenizer().encode(string)
        if len(ids) != 1:
            raise ConfigError(f"{string!r} is {len(ids)} tokens, not one; pass a single token (see to_str_tokens)")
        return ids[0]

    def get_token_position(self, single_token: str | int | Tensor, input: str | Int[Tensor, "pos"],
                           mode: Literal["first", "last"] = "first", prepend_bos: bool | None = None,
                           padding_side: PaddingSide | None = None) -> int:
        """The position of a token in a text or a [pos] / [1, pos] tensor (its first or last
        occurrence), counting BOS when the text gets one.

        Raises:
            ConfigError: the token does not occur, a batch of more than one row, or a bad mode.
        """
        tokens = self.to_tokens(input, prepend_bos, padding_side=padding_side) if isinstance(input, str) else torch.as_tensor(input)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ConfigError(f"get_token_position takes one sequence, [pos] or [1, pos], got {tuple(tokens.shape)}")
            tokens = tokens[0]
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        if mode not in ("first", "last"):
            raise ConfigError(f"mode must be 'first' or 'last', got {mode!r}")
        at = (tokens == token).nonzero().flatten()
        if not len(at):
            raise ConfigError(f"token {token} does not occur in the input; check it with to_str_tokens")
        return int(at[0] if mode == "first" else at[-1])

    def tokens_to_residual_directions(self, tokens: str | int | Tensor) -> Float[Tensor, "... d_model"]:
        """The unembedding direction W_U[:, token] of a token (a string of one token, an id, or a
        tensor of ids: [..., d_model])."""
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return self.W_U[:, tokens.to(self.W_U.device)].movedim(0, -1)
        token = self.to_single_token(tokens) if isinstance(tokens, str) else int(tokens)
        return self.W_U[:, token]

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
        self, input: str | Sequence[str] | Int[Tensor, "batch pos"] = "", max_new_tokens: int = 10, stop_at_eos: bool = True,
        eos_token_id: int | None = None, do_sample: bool = True, top_k: int | None = None, top_p: float | None = None,
        temperature: float | int = 1.0, use_past_kv_cache: bool = True, prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None, return_type: Literal["input", "str", "tokens"] = "input",
        verbose: bool = False, attention_mask: Shaped[Tensor, "batch pos"] | None = None, seed: int | None = None,
        use_kv_cache: bool | None = None,
    ) -> Union[Int[Tensor, "batch new_pos"], str, list[str]]:
        """Continue a text (or every row of `tokens`) by `max_new_tokens` tokens, with
        TransformerLens's arguments and return types.

        With the KV cache (the default), the prompt runs once and each new token runs alone,
        attending to the cached keys and values. Past n_ctx tokens the window slides, which moves
        every position, so from then on each token reruns the whole window. Texts are left-padded,
        so every row continues from its last real token.

        Args:
            input: a string, a list of strings, or [batch, pos] prompt ids.
            max_new_tokens: how many tokens to add (fewer when every row has stopped at EOS).
            stop_at_eos: a row that produced `eos_token_id` (default the tokenizer's end-of-text)
                gets EOS from then on, and generation ends when every row has.
            do_sample: False is greedy (argmax), as `temperature=0`.
            top_k, top_p: sample among the k most likely tokens / the smallest set whose
                probability reaches p (after the temperature, in that order).
            use_past_kv_cache: False reruns the whole sequence for every token (the reference the
                cache is tested against); `use_kv_cache` is the older name.
            return_type: "input" returns what came in (text for text, ids for ids), "str" the
                text, "tokens" the ids [batch, pos + new].
            verbose: a progress bar over the new tokens.
            attention_mask: the prompt's mask from `to_tokens(..., return_mask=True)`.
            seed: seed of a generator of the sampler's own (the global RNG untouched); None (the
                default) samples from torch's global RNG as TransformerLens does, so after the same
                `torch.manual_seed` both sample the same text.

        Raises:
            ConfigError: a negative temperature or max_new_tokens, top_k below 1, top_p outside (0, 1].
        """
        if temperature < 0 or max_new_tokens < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
            raise ConfigError("generate needs temperature >= 0, max_new_tokens >= 0, top_k >= 1 and 0 < top_p <= 1 (or None)")
        text_in, one_text = not isinstance(input, Tensor), isinstance(input, str)
        if text_in:
            input, attention_mask = self.to_tokens(input, prepend_bos, padding_side="left", return_mask=True)
        tokens = self._continue(input, attention_mask, max_new_tokens, self._eos(stop_at_eos, eos_token_id),
                                0 if not do_sample else temperature, top_k, top_p, seed,
                                use_past_kv_cache if use_kv_cache is None else use_kv_cache, verbose)
        if return_type == "tokens" or (return_type == "input" and not text_in):
            return tokens
        n_pad = 0 if attention_mask is None else (attention_mask == 0).sum(-1).tolist()
        skip = 1 if text_in and self._bos(prepend_bos) is not None else 0
        texts = [self.to_string(row[(n_pad[i] if n_pad else 0) + skip:]) for i, row in enumerate(tokens)]
        return texts[0] if one_text or (not text_in and len(texts) == 1) else texts

    def _eos(self, stop_at_eos: bool, eos_token_id: int | None) -> int | None:
        if not stop_at_eos:
            return None
        return eos_token_id if eos_token_id is not None else None if self.tokenizer is None else self.tokenizer.eot

    def _continue(self, tokens: Tensor, attention_mask: Tensor | None, max_new_tokens: int, eos: int | None,
                  temperature: float | int, top_k: int | None, top_p: float | None, seed: int | None, use_cache: bool,
                  verbose: bool) -> Tensor:
        """The sampling loop of `generate` on ids: [batch, pos + new]."""
        device = self.W_E.device
        tokens = tokens.to(device)
        mask = torch.ones_like(tokens) if attention_mask is None else attention_mask.to(device).long()
        gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        n_ctx = self.cfg.n_ctx
        cache = KVCache(self.cfg.n_layers) if use_cache else None
        done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=device)
        for _ in tqdm(range(max_new_tokens), disable=not verbose, desc="generate"):
            if cache is not None and tokens.shape[1] <= n_ctx:
                logits = self(tokens[:, cache.n_pos:], mask, kv_cache=cache)[:, -1]
            else:
                logits = self(tokens[:, -n_ctx:], mask[:, -n_ctx:])[:, -1]
            new = self._sample(logits.float(), temperature, top_k, gen, top_p)
            if eos is not None:
                new = new.masked_fill(done[:, None], eos)
                done = done | (new[:, 0] == eos)
            tokens = torch.cat([tokens, new], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if eos is not None and bool(done.all()):
                break
        return tokens

    @staticmethod
    def _sample(logits: Tensor, temperature: float | int, top_k: int | None, gen: torch.Generator | None,
                top_p: float | None = None) -> Tensor:
        """[batch, 1] next tokens from last-position logits [batch, d_vocab]: TransformerLens's
        order of operations (temperature, top-k, top-p) and draw (one multinomial with replacement)."""
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1:
            ranked, order = logits.sort(dim=-1, descending=True)
            drop = ranked.softmax(-1).cumsum(-1) > top_p  # drop a token once the better ones reach p
            drop = torch.cat([torch.zeros_like(drop[:, :1]), drop[:, :-1]], dim=-1)
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, replacement=True, generator=gen)
