"""Training throughput of the default preset against TransformerLens, in one run.

Prints: tokens/s of an identical AdamW training step on icl-lab's model and on TransformerLens's
HookedTransformer (same config, batch and weights), their ratio; MFU against the measured matmul
peak; the forward overhead of the hook machinery with no hooks attached against the same forward
with hooks compiled out; the overhead of run_with_cache; and bf16 autocast against fp32.

    python benchmarks/train_throughput.py [--preset synthetic-2l] [--repeats 7]
    python benchmarks/train_throughput.py --preset natural-2l --steps 20   # natural text (issue #16)
"""

from __future__ import annotations

import argparse
import warnings

import torch

import icl_lab
from icl_lab.data import open_stream
from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens

from common import bare_forward, median_times, train_flops_per_token

warnings.filterwarnings("ignore", category=DeprecationWarning)


def make_step(model, loss_fn, batches, steps, autocast_bf16=False):
    # the optimiser icl-lab's trainer uses, for both models: only the model differs
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    it = {"i": 0}

    def run():
        for _ in range(steps):
            tokens = batches[it["i"] % len(batches)]
            it["i"] += 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
                loss = loss_fn(model, tokens)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="synthetic-2l")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=100, help="training steps per timed sample")
    ap.add_argument("--wide", action="store_true",
                    help="also a wider model (d_model 256, 4 heads, n_ctx 256, d_vocab 512, batch 16)")
    args = ap.parse_args()
    exp = icl_lab.get_preset(args.preset)
    measure(exp, args)
    if args.wide:
        wide = exp.replace(model=dict(d_model=256, n_heads=4, n_ctx=256, d_vocab=512), train=dict(batch_size=16),
                           data=dict(max_period=100, max_offset=40))
        print("\n" + "=" * 80)
        measure(wide, argparse.Namespace(**{**vars(args), "steps": max(4, args.steps // 20)}), forward_batches=1)


def measure(exp, args, forward_batches: int = 4) -> None:
    cfg, bs = exp.model, exp.train.batch_size
    stream = open_stream(exp.data, cfg.d_vocab, cfg.n_ctx, bs, seed=0)  # the preset's own data: text for natural-*
    batches = [stream.next().tokens for _ in range(16)]
    tokens_per_sample = args.steps * bs * cfg.n_ctx
    print(f"{exp.name}: {cfg.n_layers}L d_model={cfg.d_model} heads={cfg.n_heads} d_vocab={cfg.d_vocab} "
          f"n_ctx={cfg.n_ctx} batch={bs}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    ours = Transformer(cfg, seed=0)
    ref = to_transformer_lens(Transformer(cfg, seed=0)).train()
    x = batches[0]
    assert torch.allclose(ours(x), ref(x), atol=1e-4), "models disagree; the comparison would be meaningless"

    def ours_loss(m, t):
        return m.loss(t)

    def tl_loss(m, t):
        return m(t, return_type="loss")

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t = median_times({
        # the matmul peak is sampled between the training samples: the machine's speed drifts
        "matmul 1024^3 x8": lambda: [a @ b for _ in range(8)],
        "icl-lab": make_step(ours, ours_loss, batches, args.steps),
        "transformer-lens": make_step(ref, tl_loss, batches, args.steps),
        "icl-lab bf16": make_step(Transformer(cfg, seed=0), ours_loss, batches, args.steps, autocast_bf16=True),
    }, repeats=args.repeats)
    peak = 8 * 2 * 1024**3 / t.pop("matmul 1024^3 x8")
    tps = {k: tokens_per_sample / v for k, v in t.items()}
    print("\n## Training step (forward + backward + clip + AdamW), median of", args.repeats)
    for k, v in tps.items():
        print(f"  {k:18s} {v:12,.0f} tokens/s")
    print(f"  ratio icl-lab / transformer-lens: {tps['icl-lab'] / tps['transformer-lens']:.2f}x  (goal >= 2x)")
    print(f"  ratio bf16 / fp32 (icl-lab):      {tps['icl-lab bf16'] / tps['icl-lab']:.2f}x")

    achieved = tps["icl-lab"] * train_flops_per_token(cfg)
    print("\n## MFU")
    print(f"  fp32 matmul peak (1024^3, sampled between the steps): {peak / 1e9:.1f} GFLOP/s; training: {achieved / 1e9:.1f} GFLOP/s "
          f"({train_flops_per_token(cfg) / 1e3:.0f} kFLOP/token)")
    print(f"  MFU: {achieved / peak:.1%}  (goal >= 40%)")

    ours.eval()
    big = torch.cat(batches[:forward_batches])
    with torch.inference_mode():
        assert torch.allclose(ours(big), bare_forward(ours, big), atol=1e-5)
        def times20(fn):
            def run():
                for _ in range(20):
                    fn(big)  # results dropped at once, so no run pays for another's memory
            return run

        f = median_times({
            "hooks compiled out": times20(lambda t: bare_forward(ours, t)),
            "hook points, none attached": times20(ours),
            "run_with_cache (all hooks)": times20(ours.run_with_cache),
            "transformer-lens forward": times20(ref),
        }, repeats=args.repeats * 3)
    base = f["hooks compiled out"]
    print(f"\n## Forward, batch {big.shape[0]}, median of {args.repeats * 3}")
    for k, v in f.items():
        print(f"  {k:28s} {v / 20 * 1e3:7.3f} ms   {v / base - 1:+7.1%} vs compiled out")
    print(f"  hook overhead with none attached: {f['hook points, none attached'] / base - 1:+.1%}  (goal <= 3%)")


if __name__ == "__main__":
    main()
