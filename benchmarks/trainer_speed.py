"""The whole trainer's speed on a preset (issue #26): icl-lab's `fit` (data, step, logging,
checkpoints) in eager fp32, bf16 autocast, torch.compile and both, against a TransformerLens training
loop on the same batches in fp32 and in the same bf16 autocast. Interleaved in one process, each
variant timed `--repeats` times; medians of the trainer's own logged tokens/s (after the first
`--skip` steps, so a compile is not in them) and of the whole wall time (compile included).

    .venv/bin/python benchmarks/trainer_speed.py --preset natural-2l --steps 400 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import icl_lab
from icl_lab.data import open_stream
from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens

warnings.filterwarnings("ignore")


def icl_lab_variant(cfg, dtype: str, compile_: bool, skip: int, folder: Path):
    def run() -> tuple[float, float]:
        exp = cfg.replace(train={"dtype": dtype, "compile": compile_, "log_every": 25, "n_checkpoints": 10})
        t0 = time.perf_counter()
        r = icl_lab.train(exp, out=folder / f"{dtype}-{compile_}-{time.monotonic_ns()}")
        wall = time.perf_counter() - t0
        log = r.log
        return float(log[log.step > skip].tokens_per_s.median()), wall
    return run


def transformer_lens_variant(cfg, bf16: bool, skip: int):
    stream = open_stream(cfg.data, cfg.model.d_vocab, cfg.model.n_ctx, cfg.train.batch_size, seed=0)

    def run() -> tuple[float, float]:
        model = to_transformer_lens(Transformer(cfg.model, seed=0)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas, fused=True)
        t0 = time.perf_counter()
        for step in range(cfg.train.steps):
            if step == skip:
                t_skip = time.perf_counter()
            tokens = stream.next().tokens
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(tokens, return_type="loss")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        end = time.perf_counter()
        tokens_after = (cfg.train.steps - skip) * cfg.train.batch_size * cfg.model.n_ctx
        return tokens_after / (end - t_skip), end - t0
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="natural-2l")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--skip", type=int, default=100, help="steps left out of tokens/s (compile, warm-up)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = icl_lab.get_preset(args.preset).replace(train={"steps": args.steps, "warmup_steps": min(50, args.steps)})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        variants = {
            "icl-lab eager fp32": icl_lab_variant(cfg, "fp32", False, args.skip, folder),
            "icl-lab eager bf16": icl_lab_variant(cfg, "bf16", False, args.skip, folder),
            "icl-lab compiled fp32": icl_lab_variant(cfg, "fp32", True, args.skip, folder),
            "icl-lab compiled bf16": icl_lab_variant(cfg, "bf16", True, args.skip, folder),
            "TransformerLens fp32": transformer_lens_variant(cfg, False, args.skip),
            "TransformerLens bf16": transformer_lens_variant(cfg, True, args.skip),
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                results[name].append(run())
    base = statistics.median(tps for tps, _ in results["icl-lab eager fp32"])
    print(f"{args.preset}, {args.steps} steps x {cfg.train.batch_size * cfg.model.n_ctx} tokens, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats}")
    print("| variant | tokens/s (after step %d) | vs icl-lab eager fp32 | wall per run (compile included) |" % args.skip)
    print("|---|---|---|---|")
    for name, rows in results.items():
        tps = statistics.median(t for t, _ in rows)
        wall = statistics.median(w for _, w in rows)
        print(f"| {name} | {tps:,.0f} | {tps / base:.2f}x | {wall:.1f} s |")


if __name__ == "__main__":
    main()
