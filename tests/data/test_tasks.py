"""The in-context tasks of Argument 4: every marked source is the right one, by construction."""

import pytest
import torch

from icl_lab.data import DataConfig, sample_batch
from icl_lab.data.tasks import FUZZY_CLASS, PATTERN_CATEGORIES, bijection, sample_task
from icl_lab.errors import DataError
from icl_lab.train.config import ExperimentConfig


def links(batch):
    """(example, target position, source position) for every marked source."""
    b, q, k = torch.nonzero(batch.sources, as_tuple=True)
    return list(zip(b.tolist(), (q + 1).tolist(), k.tolist()))


def draw(task, d_vocab=128, n_ctx=64, n=16, seed=0):
    return sample_task(task, d_vocab, n_ctx, n, torch.Generator().manual_seed(seed))


def test_translation_targets_are_the_translated_sources():
    batch = draw("translation")
    f, n = bijection(128)
    assert sorted(f[1:].tolist()) == list(range(n + 1, 2 * n + 1))  # a bijection onto alphabet B
    found = links(batch)
    assert len(found) > 100
    for b, t, s in found:
        assert batch.tokens[b, t] == f[batch.tokens[b, s]]  # the target is the source's translation
        assert batch.tokens[b, t - 1] == f[batch.tokens[b, s - 1]]  # and the query translates the token before it


def test_fuzzy_targets_are_near_equivalents_never_the_same_token():
    batch = draw("fuzzy")
    found = links(batch)
    assert len(found) > 100
    for b, t, s in found:
        target, source = int(batch.tokens[b, t]), int(batch.tokens[b, s])
        assert target != source and (target - 1) // FUZZY_CLASS == (source - 1) // FUZZY_CLASS


def test_pattern_targets_share_the_category_of_every_source():
    batch = draw("pattern")
    size = 8
    cat = lambda b, p: (int(batch.tokens[b, p]) - 1) // size  # noqa: E731
    found = links(batch)
    assert len(found) > 200
    for b, t, s in found:
        assert cat(b, t) == cat(b, s) and cat(b, t - 1) == cat(b, s - 1)
        assert 0 <= cat(b, t) < PATTERN_CATEGORIES


def test_repeated_sources_are_literal_copies_and_masks_agree():
    for task in ("repeated", "translation", "fuzzy", "pattern", "mixture"):
        batch = draw(task)
        assert batch.tokens.shape == (16, 64) and (batch.tokens[:, 0] == 0).all()
        assert torch.equal(batch.target_mask, batch.sources.any(-1))
        assert not batch.sources[..., 0].any()  # BOS is never a source
    batch = draw("repeated")
    for b, t, s in links(batch):
        assert batch.tokens[b, t] == batch.tokens[b, s] and batch.tokens[b, t - 1] == batch.tokens[b, s - 1]


def test_tasks_are_deterministic_by_seed_and_mix():
    a, b, c = draw("mixture", seed=3), draw("mixture", seed=3), draw("mixture", seed=4)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.sources, b.sources) and not torch.equal(a.tokens, c.tokens)
    # a mixture holds translations (alphabet B after A) and literal repeats
    assert (a.tokens > 63).any() and (a.tokens <= 63).any()


def test_data_config_trains_on_tasks_and_rejects_impossible_shapes():
    batch = sample_batch(DataConfig(kind="mixture"), 128, 64, 8, torch.Generator().manual_seed(0))
    assert batch.tokens.shape == (8, 64) and batch.repeat_mask.shape == (8, 63) and batch.repeat_mask.any()
    with pytest.raises(DataError, match="too small for the in-context tasks"):
        sample_batch(DataConfig(kind="pattern"), 12, 64, 2, torch.Generator())
    with pytest.raises(Exception, match="too small for the in-context tasks"):
        ExperimentConfig.parse({"model": {"n_layers": 1, "d_model": 16, "n_heads": 1, "d_vocab": 12, "n_ctx": 64},
                                "data": {"kind": "fuzzy"}, "train": {"steps": 100}}, where="test")
