"""Copying scores: does what a head writes raise the logit of the token it attends to? Olsson et
al. (2022), "In-context Learning and Induction Heads", Model Analysis Table ("copying"), with the
primary score made vocabulary-robust (docs/decisions.md, "Copying score").

- `copying_scores` (the primary `copying`): on the repeated random-token sequences that prefix
  matching uses, for each source position s holding token t, the head's output if it attended
  fully to s, o_s = norm(resid_s) W_V W_O (+ b_V W_O), from the real residual stream entering the
  head's layer. Through the final norm (centring, gain) and W_U it gives logits l_s over a shared
  set C of competitor tokens; q_s is the share of competitors v != t with l_s[t] > l_s[v] (ties
  count one half), and `copying = 2 mean_s q_s - 1`. An identity copier reads +1, its negation -1,
  a random head about 0, at any vocabulary size, and no [d_vocab, d_vocab] matrix is formed.
- `copying_direct_scores`: the same statistic with the normalised token embedding in place of
  the residual stream (weights only; the direct path of Elhage et al. 2021).
- `copying_olsson_scores`: the paper's own recipe, kept for fidelity: on 25-token random
  sequences, the head's actual output at each position through the final norm and W_U, restricted
  to the sample's tokens, mean-subtracted and ReLU'd; the share landing on the top-attended token,
  rescaled from 0..0.5 to -1..1 and clipped. A random head reads about -0.8 there (the share of
  one token among 25 is about 0.04), so it does not centre on 0.

Each returns `[layer, head]`, or `[example, layer, head]` with `per_example=True` (for
bootstrap intervals over examples)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.measure.memory import DEFAULT_MAX_BYTES, FLOAT, forward_row_bytes, rows_per_chunk
from icl_lab.model.config import ModelConfig
from icl_lab.model.transformer import LayerNorm, Transformer

COMPETITORS = 4096  # size of the shared competitor set C (all tokens when the vocabulary is smaller)
RANK_TENSORS = 4  # float tensors of [head, source chunk, |C|] alive at once in `rank_shares`
FLOP_BUDGET = 2e11  # default cap on the competitor logits' multiply-adds (a few seconds on a laptop CPU)
MIN_SOURCES = 256


def default_sources(cfg: ModelConfig, competitors: int = COMPETITORS) -> int:
    """How many source positions fit FLOP_BUDGET (at least MIN_SOURCES): every one on small
    models, a few hundred on a 30-layer, 49k-token model."""
    per_source = 2 * cfg.n_layers * cfg.n_heads * min(competitors, cfg.d_vocab) * cfg.d_model
    return max(MIN_SOURCES, int(FLOP_BUDGET // per_source))


def competitor_set(d_vocab: int, n: int = COMPETITORS, seed: int = 0) -> Int[Tensor, "competitor"]:
    """The shared competitor token ids: every token when d_vocab <= n, else a fixed random n."""
    if d_vocab <= n:
        return torch.arange(d_vocab)
    return torch.randperm(d_vocab, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _to_logit_space(model: Transformer, written: Tensor) -> Tensor:
    """What the final norm does to a direction, up to its positive scale: centre (LayerNorm) and
    multiply by the gain. The scale is shared by every logit, so ranks do not depend on it."""
    if isinstance(model.ln_final, LayerNorm):
        written = written - written.mean(-1, keepdim=True)
    w = getattr(model.ln_final, "w", None)
    return written if w is None else written * w


def rank_shares(
    model: Transformer, written: Float[Tensor, "head source d_model"], targets: Int[Tensor, "source"], competitors: Tensor,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "head source"]:
    """q: for each head and source, the share of competitors v != target whose logit the written
    vector raises less than the target's (ties count one half). Sources are scored in chunks whose
    competitor logits ([head, chunk, |C|], RANK_TENSORS of them at once) fit `max_bytes`."""
    W_U = model.W_U.detach()
    comp = competitors.to(W_U.device)
    x = _to_logit_space(model, written)
    return rank_statistics(x, W_U, targets, comp, max_bytes)[0]


def rank_statistics(x: Float[Tensor, "head source d_model"], W_U: Tensor, targets: Int[Tensor, "source"], comp: Tensor,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Float[Tensor, "head source"], Float[Tensor, "head source"]]:
    """(q, margin) of vectors `x` already in logit space: q as `rank_shares`; the margin is the
    target's logit above the competitors' mean in units of their standard deviation, which keeps
    growing where q saturates at 1 (two strong copiers can be told apart)."""
    own = torch.einsum("hsd,ds->hs", x, W_U[:, targets])  # [head, source]
    chunk = rows_per_chunk(RANK_TENSORS * x.shape[0] * len(comp) * max(FLOAT, x.element_size()), max_bytes, x.shape[1])
    q, margin = [], []
    for i in range(0, x.shape[1], chunk):
        stats = compare_to_competitors(own[:, i : i + chunk], x[:, i : i + chunk] @ W_U[:, comp], targets[i : i + chunk], comp)
        q.append(stats[0])
        margin.append(stats[1])
    return torch.cat(q, dim=1), torch.cat(margin, dim=1)


def compare_to_competitors(own: Tensor, logits: Tensor, targets: Tensor, comp: Tensor) -> tuple[Tensor, Tensor]:
    """For target logits `own` [..., source] and competitor logits [..., source, |C|]: the share of
    competitors v != target below the target (ties one half), and the target's z-score among them."""
    rival = (comp[None, :] != targets[:, None]).to(logits.dtype)  # [source, |C|]: v != t (not by float equality)
    n = rival.sum(-1)
    o = own[..., None]
    q = (((o > logits) + 0.5 * (o == logits)) * rival).sum(-1) / n
    mean = (logits * rival).sum(-1) / n
    std = ((((logits - mean[..., None]) ** 2) * rival).sum(-1) / n).sqrt()
    return q, (own - mean) / std.clamp_min(1e-12)


def _head_outputs(model: Transformer, layer: int, x: Float[Tensor, "source d_model"]) -> Float[Tensor, "head source d_model"]:
    """o = x W_V (+ b_V) W_O for every head of `layer`: what it writes when it attends fully to x."""
    attn = model.blocks[layer].attn
    v = torch.einsum("sd,hde->hse", x, attn.W_V)
    if attn.b_V is not None:
        v = v + attn.b_V[:, None, :]
    return torch.einsum("hse,hed->hsd", v, attn.W_O)


@torch.inference_mode()
def copying_scores(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    first: int = 1,
    max_sources: int | None = None,
    competitors: int = COMPETITORS,
    seed: int = 0,
    per_example: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "layer head"] | Float[Tensor, "batch layer head"]:
    """The primary copying score of every head (module docstring): 2 mean_s q_s - 1 in [-1, 1].

    Args:
        model: the model.
        tokens: [batch, pos] sequences, normally the repeated random tokens of prefix matching.
        first: the first source position (1 skips a BOS column).
        max_sources: at most this many source positions in all (an even spread per sequence);
            default `default_sources(model.cfg)`.
        competitors: size of the competitor set C.
        per_example: return [batch, layer, head] (each sequence's mean over its sources).
        max_bytes: working memory: the forward runs in chunks of sequences, keeps only the
            residual stream at the source positions and stops before the unembedding.

    Example:
        >>> tokens, seg_len = repeated_random_tokens(model.cfg.d_vocab, model.cfg.n_ctx, n_examples=32)
        >>> copying_scores(model, tokens)   # [layer, head]; +1 for a perfect copier
    """
    out = copying_statistics(model, tokens, first, max_sources, competitors, seed, max_bytes, null=False)["copying"]
    return out if per_example else out.mean(0)


@torch.inference_mode()
def copying_statistics(
    model: Transformer, tokens: Int[Tensor, "batch pos"], first: int = 1, max_sources: int | None = None,
    competitors: int = COMPETITORS, seed: int = 0, max_bytes: int = DEFAULT_MAX_BYTES, null: bool = True,
) -> dict[str, Float[Tensor, "batch layer head"]]:
    """Per sequence, every head's `copying` score (as `copying_scores`), its `margin` (the
    attended token's z-score among the competitors in what the head writes, averaged over sources;
    it does not saturate) and, with `null`, the `null` score: `copying` with each source's own
    token replaced by the token of another source of the same sequence (a fixed derangement), which
    reads about 0 for any head and so shows how far above chance `copying` is."""
    device = model.W_U.device
    tokens = tokens.to(device)
    batch, n_pos = tokens.shape
    max_sources = max_sources or default_sources(model.cfg, competitors)
    per_seq = max(1, min(n_pos - first, max_sources // batch))
    cols = torch.linspace(first, n_pos - 1, per_seq).round().long().unique().to(device)  # [k] source positions
    comp = competitor_set(model.cfg.d_vocab, competitors, seed)
    resid = _resid_at(model, tokens, cols, max_bytes)  # [layer, batch, k, d_model]
    targets = {"copying": tokens[:, cols].flatten()}  # [batch * k]
    if null:
        targets["null"] = tokens[:, cols][:, _other_columns(len(cols), seed).to(device)].flatten()
    out = {name: torch.empty(batch, model.cfg.n_layers, model.cfg.n_heads) for name in (*targets, "margin")}
    per_sequence = lambda t: t.view(-1, batch, len(cols)).mean(-1).T.float().cpu()  # noqa: E731  [head, b*k] -> [batch, head]
    for layer, block in enumerate(model.blocks):
        x = block.attn_inputs(resid[layer], None)[2].flatten(0, 1)  # values read the normalised stream
        for name, target in targets.items():
            q, margin = _layer_rank_statistics(model, layer, x, target, comp, max_bytes)  # [head, batch * k]
            out[name][:, layer] = per_sequence(2 * q - 1)
            if name == "copying":
                out["margin"][:, layer] = per_sequence(margin)
    return out


def _other_columns(k: int, seed: int) -> Tensor:
    """For each of k source columns, another column: a fixed random derangement (never itself)."""
    if k < 2:
        return torch.zeros(k, dtype=torch.long)
    cycle = torch.randperm(k, generator=torch.Generator().manual_seed(seed + 2))
    other = torch.empty(k, dtype=torch.long)
    other[cycle] = cycle.roll(1)  # each column takes its predecessor along a random cycle
    return other


def _layer_rank_statistics(model: Transformer, layer: int, x: Tensor, targets: Tensor, comp: Tensor,
                           max_bytes: int) -> tuple[Tensor, Tensor]:
    """`rank_statistics` of what every head of `layer` writes from the value inputs x [source,
    d_model], in source chunks whose written vectors (three [head, chunk, d_model] copies) and
    competitor logits fit `max_bytes`: ([head, source], [head, source])."""
    cfg, size = model.cfg, max(FLOAT, x.element_size())
    per_source = cfg.n_heads * size * (3 * cfg.d_model + RANK_TENSORS * len(comp))
    chunk = rows_per_chunk(per_source, max_bytes, len(x))
    W_U, comp = model.W_U.detach(), comp.to(model.W_U.device)
    parts = [rank_statistics(_to_logit_space(model, _head_outputs(model, layer, x[i : i + chunk])), W_U, targets[i : i + chunk],
                             comp, max_bytes) for i in range(0, len(x), chunk)]
    return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


def _resid_at(model: Transformer, tokens: Tensor, cols: Tensor, max_bytes: int) -> Float[Tensor, "layer batch k d_model"]:
    """Every layer's residual stream entering the block, at positions `cols` only, streamed over
    chunks of sequences (no logits, no full-length cache)."""
    out = torch.empty(model.cfg.n_layers, len(tokens), len(cols), model.cfg.d_model, dtype=model.W_U.dtype, device=tokens.device)
    chunk = rows_per_chunk(forward_row_bytes(model.cfg, tokens.shape[1], model.W_U.element_size(), logits=False),
                           max_bytes, len(tokens))
    for start in range(0, len(tokens), chunk):
        def keep(resid: Tensor, *, hook, start: int = start) -> None:  # resid [batch, pos, d_model]
            out[int(hook.name.split(".")[1]), start : start + len(resid)] = resid[:, cols]

        model.run_with_hooks(tokens[start : start + chunk], stop_at_layer=model.cfg.n_layers,
                             fwd_hooks=[(lambda n: n.endswith("hook_resid_pre"), keep)])
    return out


@torch.inference_mode()
def copying_direct_scores(
    model: Transformer, max_sources: int | None = None, competitors: int = COMPETITORS, seed: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "layer head"]:
    """The copying statistic on the direct path: each source is a token's embedding alone, through
    the head's layer norm (positions and earlier layers left out). Weights only; sources are every
    token, or a fixed random `max_sources` of them (default `default_sources(model.cfg)`)."""
    d_vocab = model.cfg.d_vocab
    sources = competitor_set(d_vocab, max_sources or default_sources(model.cfg, competitors), seed + 1).to(model.W_E.device)
    comp = competitor_set(d_vocab, competitors, seed)
    embed = model.W_E.detach()[sources]  # [source, d_model]
    out = torch.empty(model.cfg.n_layers, model.cfg.n_heads)
    for layer, block in enumerate(model.blocks):
        x = block.attn_inputs(embed[None], None)[2][0]
        out[layer] = (2 * _layer_rank_statistics(model, layer, x, sources, comp, max_bytes)[0] - 1).mean(-1).float().cpu()
    return out


@torch.inference_mode()
def copying_olsson_scores(
    model: Transformer, tokens: Int[Tensor, "batch pos"], first: int = 1, per_example: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "layer head"] | Float[Tensor, "batch layer head"]:
    """The paper's copying score (module docstring) on `tokens`, normally [BOS] + 25 random
    distinct tokens per row (most and least common tokens left out). At each query position
    p >= first + 1, the head's output z_p W_O through the final norm and W_U, restricted to the
    row's own tokens; minus their mean; ReLU; the share on the token at the key the head attends
    to most (among the row's tokens, keys >= first). s in [0, 1] -> clip(4 s - 1, -1, 1).
    Sequences run in chunks whose cached z and patterns (every layer) fit `max_bytes`."""
    device = model.W_U.device
    tokens = tokens.to(device)
    cfg, n_pos, itemsize = model.cfg, tokens.shape[1], model.W_U.element_size()
    cached = cfg.n_layers * n_pos * cfg.n_heads * (n_pos + cfg.d_head) * itemsize  # z and pattern of every layer
    written = 2 * cfg.n_heads * n_pos * cfg.d_model * max(itemsize, FLOAT)  # one layer's outputs through the final norm
    chunk = rows_per_chunk(cached + written + forward_row_bytes(cfg, n_pos, itemsize, logits=False, patterns=True),
                           max_bytes, len(tokens))
    out = torch.cat([_olsson_chunk(model, tokens[i : i + chunk], first) for i in range(0, len(tokens), chunk)])
    return out if per_example else out.mean(0)


def _olsson_chunk(model: Transformer, tokens: Tensor, first: int) -> Float[Tensor, "batch layer head"]:
    sample = tokens[:, first:]  # [batch, n] the row's tokens
    W_U = model.W_U.detach()
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("attn.hook_z", "attn.hook_pattern")),
                                    stop_at_layer=model.cfg.n_layers)
    out = torch.empty(len(tokens), model.cfg.n_layers, model.cfg.n_heads)
    for layer, block in enumerate(model.blocks):
        z = cache[f"blocks.{layer}.attn.hook_z"][:, first + 1 :]  # [batch, q, head, d_head]
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, first + 1 :, first:]  # [batch, head, q, key]
        written = _to_logit_space(model, torch.einsum("bqhe,hed->bhqd", z, block.attn.W_O))
        logits = torch.einsum("bhqd,dbn->bhqn", written, W_U[:, sample])  # over the row's tokens only
        raised = (logits - logits.mean(-1, keepdim=True)).relu()  # [batch, head, q, n]
        top = pattern.argmax(-1, keepdim=True)  # [batch, head, q, 1] index among the row's tokens
        share = raised.gather(-1, top)[..., 0] / raised.sum(-1).clamp_min(1e-12)
        out[:, layer] = (4 * share.mean(-1) - 1).clamp(-1, 1).float().cpu()
    return out
