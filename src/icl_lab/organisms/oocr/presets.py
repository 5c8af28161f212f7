"""The out-of-context reasoning presets, `oocr-TASK`, registered with `icl_lab.train.presets`."""

from __future__ import annotations

from icl_lab.organisms.oocr.task import OOCRConfig, build_task
from icl_lab.train.presets import register_preset

# Out-of-context reasoning (docs/oocr.md): facts need MLP memory and LayerNorm for stable
# memorisation; answers are the only targets (Batch.loss_mask). Vocabulary and context come from
# the task itself. Weight decay is what lets held-out compositions grok (Wang et al. 2024).
_OOCR_MODEL = dict(n_layers=2, d_model=128, n_heads=4, d_mlp=512, positional="learned", normalization="layernorm")
_OOCR_TRAIN = dict(steps=1500, batch_size=256, lr=1e-3, warmup_steps=100, weight_decay=0.1, log_every=50, n_checkpoints=60)
_OOCR_TASKS = {
    "reversal": ("facts x R y, 70% of pairs also trained reversed: is the untrained direction learned? (the reversal curse)",
                 dict(task="reversal", n_items=200, held_out=0.3), {}, dict(steps=1000)),
    "chain": ("A->B, B->C and A->C for 80% of chains: is A->C inferred for the rest?",
              dict(task="chain", n_items=200, held_out=0.2), {}, {}),
    "chain-cot": ("the chain task with the bridge written out (x 1 y z)", dict(task="chain-cot", n_items=200, held_out=0.2), {}, {}),
    "chain-same": ("the chain task with both facts in one training sequence", dict(task="chain-same", n_items=200, held_out=0.2), {}, {}),
    # phi 12: the middle of Wang et al.'s range, where ID generalisation lags memorisation visibly within ~10 min here
    # (phi 7.2 had not generalised by 10k steps, phi 18 generalised with memorisation; docs/oocr.md)
    "two-hop": ("two-hop composition e r1 r2 over 200 entities x 20 relations, phi 12: in-distribution vs OOD",
                dict(task="two-hop", n_items=200, n_relations=20, phi=12.0), dict(n_layers=4), dict(steps=12000)),
}


def _oocr_preset(name: str, task: dict, model: dict, train: dict) -> dict:
    built = build_task(OOCRConfig(**task))
    return dict(name=f"oocr-{name}", model={**_OOCR_MODEL, "d_vocab": built.d_vocab, "n_ctx": built.n_ctx, **model},
                data={"kind": "oocr", "oocr": task}, train={**_OOCR_TRAIN, **train})


def register_presets() -> None:
    """Register `oocr-TASK` for every task; each is built on demand (the task's vocabulary size
    needs the task, which takes up to a second to build)."""
    for name, (desc, task, model, train) in _OOCR_TASKS.items():
        register_preset(f"oocr-{name}", desc, lambda name=name, task=task, model=model, train=train: _oocr_preset(name, task, model, train))
