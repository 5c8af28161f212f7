"""Out-of-context reasoning, measured at every checkpoint: accuracy on each split of the task
(trained facts, held-out inferences, the in-context control, ...) and the loss of the right
answer (`split_scores`); `icl_lab.organisms.oocr.pipeline` stores them at every checkpoint as
`oocr.accuracy.{split}` and `oocr.loss.{split}`, where grokking shows as a held-out accuracy that
rises long after the trained one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from icl_lab.organisms.oocr.task import OOCRTask
from icl_lab.model.transformer import Transformer

PREFIX = "oocr."


@torch.inference_mode()
def greedy(model: Transformer, prompts: Int[Tensor, "n prompt"], n_new: int) -> Int[Tensor, "n n_new"]:
    """Greedy decoding of `n_new` tokens after each prompt (all prompts have one length)."""
    tokens = prompts
    for _ in range(n_new):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[:, prompts.shape[1] :]


@torch.inference_mode()
def split_scores(model: Transformer, task: OOCRTask) -> dict[str, dict[str, float]]:
    """Per split: `accuracy` (greedy decoding gets the final answer token right) and `loss` (of
    the final answer token, with the earlier answer tokens given)."""
    out = {}
    for name, (prompts, answers) in task.splits.items():
        if len(prompts) == 0:
            continue
        decoded = greedy(model, prompts, answers.shape[1])
        full = torch.cat([prompts, answers], dim=1)
        logits = model(full[:, :-1])[:, -1]  # predicts the final answer token
        out[name] = {"accuracy": float((decoded[:, -1] == answers[:, -1]).float().mean()),
                     "loss": float(F.cross_entropy(logits, answers[:, -1]))}
    return out
