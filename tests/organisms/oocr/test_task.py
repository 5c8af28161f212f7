"""Out-of-context reasoning tasks: the splits are what they claim to be, by construction."""

import pytest
import torch

from icl_lab.data import DataConfig, open_stream
from icl_lab.organisms.oocr.task import BOS, PAD, OOCRConfig, build_task, task_problem
from icl_lab.errors import DataError


def rows(tokens: torch.Tensor) -> set[tuple[int, ...]]:
    """Training sequences without padding."""
    return {tuple(t for t in row if t != PAD) for row in tokens.tolist()}


def contains(train: set, seq: list[int]) -> bool:
    return any(row[: len(seq)] == tuple(seq) for row in train)


def test_reversal_holds_out_one_direction_and_gives_the_control_in_context():
    task = build_task(OOCRConfig(task="reversal", n_items=50, held_out=0.4))
    train = rows(task.train)
    (held_p, held_a), (ctx_p, ctx_a) = task.splits["held_out"], task.splits["in_context"]
    assert len(task.splits["trained"][0]) == 50 and len(held_p) == 20 and len(task.splits["trained_reverse"][0]) == 30
    for p, a in zip(held_p.tolist(), held_a.tolist()):
        assert not contains(train, p + a)  # the reversed fact is never trained...
        y, x = p[1], a[0]
        assert contains(train, [BOS, x, 2, y])  # ...the forward one always is
    for p, a in zip(ctx_p.tolist(), ctx_a.tolist()):
        assert p[1] == a[0] and p[3] == p[4]  # x R y y R~ -> x: the answer is in context
    for p, a in zip(*task.splits["trained_reverse"]):
        assert contains(train, p.tolist() + a.tolist())
    assert task.chance == pytest.approx(1 / 50)


def test_chain_variants_never_train_held_out_compositions():
    for variant in ("chain", "chain-cot", "chain-same"):
        task = build_task(OOCRConfig(task=variant, n_items=40, held_out=0.25))
        train = rows(task.train)
        prompts, answers = task.splits["held_out"]
        assert len(prompts) == 10 and len(task.splits["trained"][0]) == 30
        for p, a, bridge in zip(prompts.tolist(), answers.tolist(), task.bridges["held_out"].tolist()):
            x, z = p[1], a[-1]
            assert contains(train, [BOS, x, 2, bridge]) and contains(train, [BOS, bridge, 2, z])  # both hops trained
            assert not any(row[:2] == (BOS, x) and row[2] == 3 for row in train)  # x 1 ... never
            if variant == "chain-cot":
                assert a == [bridge, z]
            if variant == "chain-same":  # facts in context, and the held-out facts co-occur in training
                assert p[:7] == [BOS, x, 2, bridge, bridge, 2, z] and contains(train, p[:7])
        for p, a in zip(*task.splits["trained"]):
            assert contains(train, p.tolist() + a.tolist())


def test_two_hop_splits_follow_the_definitions():
    cfg = OOCRConfig(task="two-hop", n_items=60, n_relations=6, phi=3.6, ood=0.1)
    task = build_task(cfg)
    rel = task.relation
    train = task.train[task.train[:, 4] != PAD]  # compositions: BOS e r1 r2 answer (atomic facts end in padding)
    composed = {tuple(r) for r in train[:, 1:4].tolist()}
    atoms_in_compositions = {(e, r1) for e, r1, _ in composed} | {(int(rel[e, r1]), r2) for e, r1, r2 in composed}
    n_atoms = (task.train[:, 4] == PAD).sum().item()
    assert n_atoms == 60 * 6 and len(composed) == pytest.approx(3.6 * 54 * 6, abs=1)  # phi x ID atomic facts
    for row in train.tolist():
        assert row[4] == rel[rel[row[1], row[2]], row[3]]  # the answer composes the two hops
    for split in ("id", "ood"):
        prompts, answers = task.splits[split]
        assert len(prompts) > 0
        for (_, e, r1, r2), a, b in zip(prompts.tolist(), answers[:, 0].tolist(), task.bridges[split].tolist()):
            assert b == rel[e, r1] and a == rel[b, r2] and (e, r1, r2) not in composed
            used = {(e, r1), (b, r2)} <= atoms_in_compositions
            assert used if split == "id" else not ({(e, r1), (b, r2)} & atoms_in_compositions)


def test_tasks_are_deterministic_and_the_stream_trains_only_answers():
    a, b = build_task(OOCRConfig(task_seed=3)), build_task(OOCRConfig(task_seed=3))
    c = build_task(OOCRConfig(task_seed=4))
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    cfg = DataConfig(kind="oocr", oocr=OOCRConfig(n_items=30))
    stream = open_stream(cfg, 100, 8, 20, seed=0)
    batch = stream.next()
    assert batch.tokens.shape == (20, 8) and torch.equal(batch.loss_mask, batch.repeat_mask)
    assert batch.loss_mask.sum(1).eq(1).all()  # one answer per sequence
    state = stream.get_state()
    again = stream.next()
    stream.set_state(state)
    assert torch.equal(stream.next().tokens, again.tokens)


def test_shapes_that_cannot_hold_the_task_get_one_line():
    assert "d_vocab >= 64" in task_problem(OOCRConfig(n_items=30), 50, 8)
    assert "n_ctx >= 8" in task_problem(OOCRConfig(n_items=30), 100, 5)
    with pytest.raises(DataError, match="raise model.d_vocab"):
        open_stream(DataConfig(kind="oocr", oocr=OOCRConfig(n_items=30)), 50, 8, 4, seed=0)
    with pytest.raises(DataError, match="exceeds n_relations"):
        build_task(OOCRConfig(task="two-hop", n_relations=4, phi=7.2))
