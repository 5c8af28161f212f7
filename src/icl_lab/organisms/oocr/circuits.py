"""Taking an out-of-context reasoning model apart: is the bridge entity of a composed query (B
in A->C, r1(e) in e r1 r2) decodable from the residual stream, and where does the second hop read
it? Olsson-style tools applied to Wang et al. (2024)'s question.

- **Bridge lens**: the logit lens at every layer and prompt position, scored by how often the
  bridge (or the answer) is the top entity.
- **Hop patching**: the residual stream at one (layer, position) of a query is replaced by its
  value on another query; the score is how often the prediction becomes what the *donor's* bridge
  implies (two-hop: the recipient's second relation applied to the donor's bridge; otherwise the
  donor's answer). High scores mark where the bridge is carried."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.organisms.oocr.task import OOCRTask, token_label
from icl_lab.intervene.lens import logit_lens
from icl_lab.intervene.patching import patch_residual
from icl_lab.model.transformer import Transformer


@torch.inference_mode()
def bridge_lens(
    model: Transformer, prompts: Int[Tensor, "n pos"], targets: Int[Tensor, "n"], entities: tuple[int, int],
) -> Float[Tensor, "layer_plus_1 pos"]:
    """Share of queries whose logit-lens top entity equals `targets` (a bridge or an answer), at
    every layer's input (and the final output, last row) and every prompt position."""
    lo, hi = entities
    lens = logit_lens(model, prompts)[..., lo:hi]  # [layer+1, n, pos, entity]
    return (lens.argmax(-1) + lo == targets[None, :, None]).float().mean(1)


def swap_targets(task: OOCRTask, prompts: Tensor, answers: Tensor, bridges: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Pair each query with the next one (its donor) and give what a successful swap would answer.
    Returns (donor prompts, expected answers, which recipients are kept), keeping pairs whose expectation differs from the
    recipient's own answer (the rest could not tell a swap from no effect)."""
    donors = prompts.roll(-1, 0)
    if task.relation is not None and bridges is not None:  # two-hop: recipient's r2 applied to the donor's bridge
        expected = task.relation[bridges.roll(-1, 0), prompts[:, -1]]
    else:
        expected = answers[:, -1].roll(-1, 0)
    keep = expected != answers[:, -1]
    return donors[keep], expected[keep], keep


@torch.inference_mode()
def hop_patching(model: Transformer, task: OOCRTask, prompts: Tensor, answers: Tensor,
                 bridges: Tensor | None) -> Float[Tensor, "layer pos"]:
    """Share of queries that answer as their donor's bridge implies when `blocks.{l}.hook_resid_pre`
    at one position comes from the donor, for every (layer, position); see `swap_targets`."""
    donors, expected, keep = swap_targets(task, prompts, answers, bridges)
    recipients = prompts[keep]

    def swapped(logits: Tensor, tokens: Tensor) -> Tensor:
        return (logits[:, -1].argmax(-1) == expected.repeat(len(logits) // len(expected))).float()

    return patch_residual(model, donors, recipients, swapped)


ANALYSIS_QUERIES = 200  # per split


def analyze_circuits(model: Transformer, task: OOCRTask, n: int = ANALYSIS_QUERIES) -> dict:
    """Bridge lens, answer lens and hop patching on up to `n` queries of every split that has one
    answer token, as JSON-ready nested lists: `{split: {"bridge_lens": [layer+1][pos] or None,
    "answer_lens": [layer+1][pos], "hop_patching": [layer][pos], "n": queries}}`."""
    out = {}
    for name, (prompts, answers) in task.splits.items():
        if answers.shape[1] != 1 or len(prompts) < 2:
            continue  # chain-of-thought answers have two tokens: the bridge is written out, nothing to find
        prompts, answers = prompts[:n], answers[:n]
        bridges = task.bridges.get(name)
        bridges = bridges[:n] if bridges is not None else None
        out[name] = {
            "bridge_lens": bridge_lens(model, prompts, bridges, task.entities).tolist() if bridges is not None else None,
            "answer_lens": bridge_lens(model, prompts, answers[:, -1], task.entities).tolist(),
            "hop_patching": hop_patching(model, task, prompts, answers, bridges).tolist(),
            "n": len(prompts),
            "positions": [token_label(task, t) for t in prompts[0].tolist()],  # the first query, to label the x axis
        }
    return out
