"""The natural-text phase-change search (docs/natural-phase-change.md): train one candidate
configuration on the literary corpus and print, every `--every` steps, tokens seen, training
loss, loss on induction-predictable targets (`loss_repeat`: the bigram already occurred in the
window) and each layer's best prefix-matching score on repeated random tokens.

    .venv/bin/python benchmarks/natural_search.py J --threads 1
    .venv/bin/python benchmarks/natural_search.py J --set model.n_ctx=256 --set train.batch_size=8

Candidates start from BASE and apply their overrides; `--set a.b=value` adds more.
Two candidates with --threads 1 can run side by side on 2 cores."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import icl_lab
from icl_lab.measure import prefix_matching_scores
from icl_lab.model import Transformer
from icl_lab.train.checkpoint import load_weights

BASE = dict(
    model=dict(n_layers=2, d_model=128, n_heads=4, d_vocab=1024, n_ctx=128, d_mlp=0, positional="learned",
               normalization="layernorm", bias=False),
    data=dict(kind="text", corpus="literary", tokenizer="bpe"),
    train=dict(steps=4000, batch_size=32, lr=2e-3, warmup_steps=100, schedule="constant", log_every=10, n_checkpoints=100),
)
_D64 = {"d_model": 64, "n_heads": 2, "d_vocab": 512}
_NOLN = {"d_model": 64, "n_heads": 4, "d_vocab": 512, "n_ctx": 64, "normalization": "none"}
_FAST = {"lr": 3e-3, "warmup_steps": 30}
_TECH = {"corpus": "technical"}
_SYN = {"kind": "repeated"}
# the runs of docs/natural-phase-change.md; steps are generous: stop a run at its time budget
CANDIDATES = {
    "A": {"train": {"steps": 4000}},
    "B": {"model": _D64, "train": {"steps": 30000, "lr": 3e-3, "warmup_steps": 200}},
    "C": {"model": {**_D64, "n_ctx": 64}, "train": {"steps": 60000, "lr": 3e-3, "warmup_steps": 200}},
    "D": {"model": {**_D64, "n_ctx": 64}, "train": {"steps": 200000, "batch_size": 8, "lr": 2e-3, "warmup_steps": 200}},
    "E": {"model": {**_D64, "n_ctx": 64}, "data": _TECH, "train": {"steps": 200000, "batch_size": 16, "lr": 2e-3, "warmup_steps": 200}},
    "F": {"model": {**_D64, "n_ctx": 64}, "data": _SYN, "train": {"steps": 3000, "batch_size": 16, "lr": 2e-3, "warmup_steps": 200}},
    "F1": {"model": {**_NOLN, "n_heads": 1}, "data": _SYN, "train": {"steps": 2000, **_FAST}},
    "F2": {"model": {**_NOLN, "n_heads": 1, "normalization": "layernorm"}, "data": _SYN, "train": {"steps": 2000, **_FAST}},
    "G": {"model": {**_NOLN, "n_heads": 1}, "train": {"steps": 60000, **_FAST}},
    "H": {"model": {**_NOLN, "n_heads": 1}, "data": _TECH, "train": {"steps": 60000, **_FAST}},
    "I": {"model": _NOLN, "train": {"steps": 60000, **_FAST}},
    "J": {"model": _NOLN, "data": _TECH, "train": {"steps": 60000, **_FAST}},
    "K": {"model": {**_NOLN, "n_ctx": 128}, "data": _TECH, "train": {"steps": 60000, "batch_size": 16, **_FAST}},
    "N": {"model": _NOLN, "data": _TECH, "train": {"steps": 60000, "lr": 1e-3, "warmup_steps": 1000}},
    "R": {"model": {**_NOLN, "positional": "rotary"}, "data": _TECH, "train": {"steps": 60000, **_FAST}},
    "Q": {"model": {**_NOLN, "smeared_key": True}, "data": _TECH, "train": {"steps": 60000, **_FAST}},
}


def config(name: str, sets: list[str], seed: int) -> icl_lab.ExperimentConfig:
    cfg = json.loads(json.dumps(BASE))
    for section, values in CANDIDATES[name].items():
        cfg[section].update(values)
    for item in sets:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        try:
            cfg[section][field] = json.loads(value)
        except json.JSONDecodeError:  # a bare string, e.g. data.corpus=technical
            cfg[section][field] = value
    return icl_lab.ExperimentConfig.parse({"name": f"search-{name}", "seed": seed, **cfg})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidate", choices=sorted(CANDIDATES))
    ap.add_argument("--set", action="append", default=[], help="override, e.g. model.n_ctx=64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("runs/search"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config(args.candidate, args.set, args.seed)
    out = args.out / f"{args.candidate}-seed{args.seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()

    def progress(step: int, total: int, rec) -> None:
        if rec is None or rec.step != step or (step % args.every and step != total):
            return
        latest = icl_lab.load_run(out).checkpoints[-1]
        model = Transformer(cfg.model)
        model.load_state_dict(load_weights(out / "checkpoints" / f"step_{latest:07d}.safetensors"))
        pm = prefix_matching_scores(model.eval()).max(1).values.tolist()
        print(f"step {step} {time.time() - t0:.0f}s {rec.tokens / 1e6:.1f}M tokens loss {rec.loss:.3f} "
              f"repeat {rec.loss_repeat:.3f} {rec.tokens_per_s:,.0f} tok/s  PM(step {latest}) "
              + " ".join(f"{v:.2f}" for v in pm), flush=True)

    icl_lab.train(cfg, out=out, progress=progress)
    print(f"done in {time.time() - t0:.0f} s: {out}")


if __name__ == "__main__":
    main()
