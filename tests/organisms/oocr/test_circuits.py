"""Bridge lens, hop patching and split accuracy on hand-built models with known answers."""

import numpy as np
import pytest
import torch

from icl_lab.organisms.oocr.task import OOCRTask
from icl_lab.organisms.oocr.circuits import bridge_lens, hop_patching, swap_targets
from icl_lab.organisms.oocr.measure import greedy, split_scores
from tests.conftest import hand_built_ov


def echo_task(prompts: torch.Tensor, answers: torch.Tensor, relation=None) -> OOCRTask:
    return OOCRTask(d_vocab=10, n_ctx=8, train=torch.zeros(1, 8, dtype=torch.long), train_mask=torch.zeros(1, 7, dtype=torch.bool),
                    context_pool=np.empty(0), splits={"s": (prompts, answers)}, chance=0.1, entities=(0, 10), relation=relation)


@pytest.fixture
def echo():
    """Attention writes nothing, so the model predicts its current token: logits = onehot(token)."""
    return hand_built_ov(sign=0.0)


def test_greedy_and_accuracy_on_a_model_that_repeats_its_last_token(echo):
    prompts = torch.tensor([[0, 3, 5], [0, 4, 7], [0, 2, 2]])
    assert greedy(echo, prompts, 2).tolist() == [[5, 5], [7, 7], [2, 2]]
    answers = torch.tensor([[5], [1], [2]])  # right, wrong, right
    scores = split_scores(echo, echo_task(prompts, answers))["s"]
    assert scores["accuracy"] == pytest.approx(2 / 3)


def test_bridge_lens_reads_the_embedding_at_layer_zero(echo):
    prompts = torch.tensor([[0, 3, 5], [0, 4, 7], [0, 6, 1]])
    lens = bridge_lens(echo, prompts, prompts[:, 1], (0, 10))  # [layer+1, pos]
    assert lens.shape == (2, 3) and lens[0, 1] == 1 and lens[0, 2] == 0 and lens[1, 1] == 1


def test_hop_patching_moves_the_answer_only_where_it_is_carried(echo):
    prompts = torch.tensor([[0, 3, 5], [0, 4, 7], [0, 6, 1], [0, 2, 8]])
    answers = prompts[:, -1:]
    grid = hop_patching(echo, echo_task(prompts, answers), prompts, answers, None)  # [layer, pos]
    # the answer is the last token, so only the last position carries it
    assert grid[0, 2] == 1 and grid[0, :2].abs().max() == 0


def test_two_hop_swaps_expect_the_recipients_relation_on_the_donors_bridge():
    relation = torch.full((10, 4), -1)
    relation[5:, 2:] = torch.tensor([[6, 7], [7, 8], [8, 9], [9, 5], [5, 6]])  # entities 5..9, relations 2, 3
    prompts = torch.tensor([[0, 5, 2, 3], [0, 6, 3, 2], [0, 7, 2, 2]])
    bridges = relation[prompts[:, 1], prompts[:, 2]]
    answers = relation[bridges, prompts[:, 3]][:, None]
    assert bridges.tolist() == [6, 8, 8] and answers[:, 0].tolist() == [8, 9, 9]
    donors, expected, keep = swap_targets(echo_task(prompts, answers, relation), prompts, answers, bridges)
    # recipient i takes donor i+1's bridge: recipient 0 -> relation[8, 3] = 5; recipient 1 -> relation[8, 2] = 9,
    # its own answer, so the pair is dropped; recipient 2 -> relation[6, 2] = 7
    assert keep.tolist() == [True, False, True] and expected.tolist() == [5, 7] and donors[:, 1].tolist() == [6, 5]
