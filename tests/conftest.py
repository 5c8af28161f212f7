"""Shared fixtures: tiny configs and a hand-built 2-layer induction circuit with known answers."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers (pytest-xdist) on a 2-core machine: one torch thread each, and
    # the same for the subprocesses tests start, or 4 spinning threads would share 2 cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from icl_lab.model import ModelConfig, Transformer


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Corpora, tokenizers and token arrays go to a cache private to the test session, never
    the user's."""
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path_factory.getbasetemp() / "icl-lab-cache"))


def refuse_checkpoints(monkeypatch, message: str = "a checkpoint was loaded") -> None:
    """Make every checkpoint read fail: all of them go through `icl_lab.train.checkpoint._verify`
    (weights, training state, hash checks), whatever safetensors call it makes inside."""
    import importlib

    # not `import icl_lab.train.checkpoint as ...`: `icl_lab.train` is also the name of the train() function
    checkpoint = importlib.import_module("icl_lab.train.checkpoint")

    def refuse(*args, **kwargs):
        raise AssertionError(message)

    monkeypatch.setattr(checkpoint, "_verify", refuse)


def tiny_config(**over) -> ModelConfig:
    base = dict(n_layers=2, d_model=32, n_heads=2, d_vocab=50, n_ctx=24, d_mlp=0)
    return ModelConfig(**{**base, **over})


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(0))


def hand_built_induction(d_vocab: int = 12, n_ctx: int = 40, scale: float = 200.0) -> Transformer:
    """A 2-layer attention-only model built by hand.

    Residual stream = [token one-hot (V) | position one-hot (n_ctx) | previous-token one-hot (V)].
    Layer 0: a previous-token head (queries and keys read positions; position i's query matches
    the key of i-1) whose OV moves the token subspace into the previous-token subspace.
    Layer 1: an induction head (its query reads the current token, its key reads the previous
    token written by layer 0) whose OV copies the token into the logits.
    """
    V, P = d_vocab, n_ctx
    d_model, d_head = 2 * V + P, max(V, P)
    cfg = ModelConfig(
        n_layers=2, d_model=d_model, n_heads=1, d_head=d_head, d_vocab=V, n_ctx=P, d_mlp=0,
        positional="learned", normalization="none", bias=False,
    )
    model = Transformer(cfg)
    tok, pos, prev = slice(0, V), slice(V, V + P), slice(V + P, 2 * V + P)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, tok] = torch.eye(V)
        model.W_pos[:, pos] = torch.eye(P)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        # layer 0: query at i is e_i, key at j is e_{j+1}: score = scale iff j == i-1
        a0.W_Q[0, pos, :P] = torch.eye(P) * scale
        a0.W_K[0, pos, :P] = torch.diag(torch.ones(P - 1), diagonal=1)  # pos j -> e_{j+1}
        a0.W_V[0, tok, :V] = torch.eye(V)
        a0.W_O[0, :V, prev] = torch.eye(V)
        # layer 1: query = current token, key = previous token at the key position
        a1.W_Q[0, tok, :V] = torch.eye(V) * scale
        a1.W_K[0, prev, :V] = torch.eye(V)
        a1.W_V[0, tok, :V] = torch.eye(V)
        a1.W_O[0, :V, tok] = 2 * torch.eye(V)  # outvotes the direct path, which predicts the current token
        model.W_U[tok, :] = torch.eye(V)
    return model.eval()


def hand_built_ov(sign: float = 1.0, d_vocab: int = 10) -> Transformer:
    """1-layer attention-only model whose embedding, unembedding and OV circuit are identities
    (times `sign` for the OV): its head copies (sign=1) or anti-copies (sign=-1) exactly."""
    V = d_vocab
    cfg = ModelConfig(n_layers=1, d_model=V, n_heads=1, d_head=V, d_vocab=V, n_ctx=8, normalization="none", bias=False)
    model = Transformer(cfg)
    with torch.no_grad():
        model.W_E.copy_(torch.eye(V))
        model.W_pos.zero_()
        model.W_U.copy_(torch.eye(V))
        model.blocks[0].attn.W_V[0] = torch.eye(V)
        model.blocks[0].attn.W_O[0] = sign * torch.eye(V)
    return model.eval()


def hand_built_duplicate_head(d_vocab: int = 12, n_ctx: int = 40, scale: float = 300.0) -> Transformer:
    """1-layer model whose head attends from a token to its earlier copies and never to itself:
    score(i, j) = scale * [token_i == token_j] - scale * [i == j]."""
    V, P = d_vocab, n_ctx
    cfg = ModelConfig(n_layers=1, d_model=V + P, n_heads=1, d_head=V + P, d_vocab=V, n_ctx=P,
                      positional="learned", normalization="none", bias=False)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, :V] = torch.eye(V)
        model.W_pos[:, V:] = torch.eye(P)
        a = model.blocks[0].attn
        a.W_Q[0] = torch.eye(V + P) * scale
        a.W_K[0, :V, :V] = torch.eye(V)
        a.W_K[0, V:, V:] = -torch.eye(P)
    return model.eval()
