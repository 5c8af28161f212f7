"""The natural-text signals of issue #16 against a hand-built induction circuit (known answers)
and a random model (which must not pass)."""

import numpy as np
import torch

from icl_lab.measure.text_signals import make_text_probe, passage_losses, repeated_passages, text_signals
from icl_lab.model import Transformer
from tests.conftest import hand_built_induction, tiny_config


def test_repeated_passages_copy_the_first_half_after_bos():
    tokens = torch.tensor([[0, 5, 6, 7, 8, 9, 10], [0, 1, 2, 3, 4, 5, 6]])
    passages, plen = repeated_passages(tokens, first=1)
    assert plen == 3 and passages.tolist() == [[0, 5, 6, 7, 5, 6, 7], [0, 1, 2, 3, 1, 2, 3]]
    plain, plen = repeated_passages(tokens[:, 1:], first=0)
    assert plen == 3 and plain[0].tolist() == [5, 6, 7, 5, 6, 7]


def _distinct_passages(n: int = 6, plen: int = 11, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(11, generator=gen)[:plen] + 1 for _ in range(n)]  # tokens 1..11, none repeated in p
    return torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), r, r]) for r in rows])


def _sharp_induction() -> Transformer:
    model = hand_built_induction()
    with torch.no_grad():
        model.W_U *= 10  # copied token 20 against the current token's 10: a confident copier
    return model


def test_an_induction_circuit_finds_the_second_copy_cheaper():
    passages = _distinct_passages()
    first, second = passage_losses(_sharp_induction(), passages, plen=11, first=1)
    assert (second < 0.05).all()  # the hand-built circuit copies the token after the earlier occurrence
    assert (first > 1.0).all()  # with no earlier copy it can only guess
    random_first, random_second = passage_losses(Transformer(tiny_config(d_vocab=12, n_ctx=40), seed=0), passages, 11, 1)
    assert abs(float((random_first - random_second).mean())) < 0.1  # a random model gains nothing


def test_text_signals_separate_an_induction_circuit_from_a_random_model():
    val = np.random.default_rng(0).integers(1, 12, 4000).astype(np.uint16)
    probe = make_text_probe(val, n_ctx=40, d_vocab=12, bos=0, n_windows=8, n_passages=8)
    assert probe.passages.shape == (8, 1 + 2 * probe.passage_len) and probe.windows[:, 0].eq(0).all()
    built = text_signals(_sharp_induction(), probe)
    assert built["induction_heads"] == [[1, 0]] and built["prev_token_heads"] == [[0, 0]]
    assert built["passage_gain"] > 0.5 and built["prev_token_text"][0][0] > 0.99
    rand = text_signals(Transformer(tiny_config(d_vocab=12, n_ctx=40), seed=1), probe)
    assert rand["induction_heads"] == [] and rand["prev_token_heads"] == [] and abs(rand["passage_gain"]) < 0.1
