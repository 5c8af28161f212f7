"""The Markov-chain task: seeded, resumable, each sequence from its own chain, one-line errors."""

import pytest
import torch

from icl_lab.data import DataConfig, open_stream
from icl_lab.errors import ConfigError, DataError
from icl_lab.organisms.markov import MarkovConfig, MarkovStream, sample_chains
from icl_lab.train.presets import get_preset


def test_chains_follow_their_transition_matrices():
    cfg = MarkovConfig(n_states=3)
    tokens, transitions = sample_chains(cfg, 2, 4000, torch.Generator().manual_seed(0))
    assert tokens.min() >= 0 and tokens.max() < 3
    torch.testing.assert_close(transitions.sum(-1), torch.ones(2, 3))
    for b in range(2):  # empirical transition frequencies match the chain's own matrix
        counts = torch.zeros(3, 3)
        counts.index_put_((tokens[b, :-1], tokens[b, 1:]), torch.ones(3999), accumulate=True)
        torch.testing.assert_close(counts / counts.sum(-1, keepdim=True), transitions[b], atol=0.06, rtol=0)
    assert not torch.allclose(transitions[0], transitions[1])  # each sequence its own chain


def test_stream_is_seeded_and_resumable():
    cfg = DataConfig(kind="markov")
    a, b = (open_stream(cfg, 3, 32, 8, seed=5) for _ in range(2))
    assert isinstance(a, MarkovStream) and a.fingerprint(5) == b.fingerprint(5)
    state = a.get_state()
    first = a.next().tokens
    a.set_state(state)
    assert torch.equal(a.next().tokens, first) and torch.equal(b.next().tokens, first)
    assert a.fingerprint(5) != open_stream(cfg, 3, 32, 8, seed=6).fingerprint(6)


def test_small_vocabulary_fails_in_one_line():
    with pytest.raises(DataError, match="need d_vocab >= 5"):
        open_stream(DataConfig(kind="markov", markov={"n_states": 5}), 3, 32, 8, seed=0)
    with pytest.raises(ConfigError, match="need d_vocab >= 5"):
        get_preset("markov-2l").replace(data={"markov": {"n_states": 5}})


def test_preset_is_a_markov_run():
    cfg = get_preset("markov-2l")
    assert cfg.data.kind == "markov" and cfg.model.n_layers == 2 and cfg.model.d_mlp == 0
