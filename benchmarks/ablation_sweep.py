"""Batched head ablation against a serial one-forward-per-head loop, in the same run.

Pattern-preserving zero ablation of every head, scored by the ICL score, four ways:
  batched       icl_lab.intervene.ablate_heads(positions=the ICL score's two tokens): heads folded
                into the batch, each copy starting at its head's layer, only the scored rows computed
  batched-all   the same sweep scoring every position (the per-token losses of the whole context)
  serial        one forward per head on icl-lab's model, under inference mode
  TL loop       one forward per head on TransformerLens's HookedTransformer with run_with_hooks,
                autograd on and `.item()` per head: how such sweeps are usually written
Then the whole ablation table (3 kinds x 2 forms, every checkpoint) of a synthetic-2l run.

    python benchmarks/ablation_sweep.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import icl_lab
from icl_lab.intervene import ablate_heads, ablate_heads_serially, all_heads
from icl_lab.pipeline import ablate_run
from icl_lab.measure import icl_positions, icl_score, loss_by_token
from icl_lab.measure.evalset import make_eval_set
from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens

from common import median_times

warnings.filterwarnings("ignore", category=DeprecationWarning)


def tl_serial(ref, tokens: torch.Tensor, heads) -> list[float]:
    """The usual hand-written TransformerLens sweep: one run_with_hooks per head, autograd on."""
    _, cache = ref.run_with_cache(tokens)
    out = []
    for layer, head in heads:
        def zero(z, hook, head=head):
            z[:, :, head] = 0.0
            return z
        hooks = [(f"blocks.{layer}.attn.hook_z", zero)] + [
            (f"blocks.{l}.attn.hook_pattern", lambda p, hook, l=l: cache[f"blocks.{l}.attn.hook_pattern"])
            for l in range(ref.cfg.n_layers)]
        loss = ref.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
        by_pos = loss.mean(0)  # [pos-1]: index i is the loss of token i+1
        early, late = icl_positions(tokens.shape[1])
        out.append((by_pos[late - 1] - by_pos[early - 1]).item())
    return out


def compare(name: str, model: Transformer, tokens: torch.Tensor, repeats: int, with_tl: bool) -> None:
    heads = all_heads(model)
    early, late = icl_positions(tokens.shape[1])
    fns = {
        "batched": lambda: (lambda x: (x[:, :, 1].mean(1) - x[:, :, 0].mean(1)).tolist())(
            ablate_heads(model, tokens, heads, positions=[early - 1, late - 1])),
        "batched-all": lambda: [icl_score(loss_by_token(x)) for x in ablate_heads(model, tokens, heads)],
        "serial": lambda: [icl_score(loss_by_token(x)) for x in ablate_heads_serially(model, tokens, heads)],
    }
    if with_tl:
        ref = to_transformer_lens(model)
        fns["TL loop"] = lambda: tl_serial(ref, tokens, heads)
    assert torch.allclose(ablate_heads(model, tokens, heads), ablate_heads_serially(model, tokens, heads), atol=1e-5)
    scores = {k: torch.tensor(f()) for k, f in fns.items()}  # the same ICL score per head (and clean) every way
    assert all(torch.allclose(v[-len(heads):], scores["serial"][-len(heads):], atol=1e-4) for v in scores.values()), scores
    t = median_times(fns, repeats=repeats)
    print(f"\n## {name}: {len(heads)} heads, {tokens.shape[0]} sequences x {tokens.shape[1]} tokens (median of {repeats})")
    for k, v in t.items():
        print(f"  {k:11s} {v * 1e3:9.1f} ms   {v / t['batched']:5.1f}x the batched time")


def patching_by_position(model: Transformer, tokens: torch.Tensor, repeats: int) -> None:
    """Head x position activation patching: many small cells, where one pass per cell is all overhead."""
    from transformer_lens import patching

    from icl_lab.intervene import patch_heads

    corrupt = torch.cat([tokens[:, :1], tokens[:, 1:].roll(1, dims=0)], dim=1)  # same BOS, other sequences
    metric = lambda logits, toks: logits[:, -1].log_softmax(-1).gather(1, toks[:, -1:]).squeeze(1)  # noqa: E731
    ref = to_transformer_lens(model)
    _, clean_cache = ref.run_with_cache(tokens)
    tl_metric = lambda logits: metric(logits, corrupt).mean()  # noqa: E731  (our metric sees the run's tokens)
    got = patch_heads(model, tokens, corrupt, metric, per_position=True)
    want = patching.get_act_patch_attn_head_out_by_pos(ref, corrupt, clean_cache, tl_metric)  # [layer, pos, head]
    assert torch.allclose(got, want.permute(0, 2, 1), atol=1e-4)
    t = median_times({
        "batched": lambda: patch_heads(model, tokens, corrupt, metric, per_position=True),
        "TL loop": lambda: patching.get_act_patch_attn_head_out_by_pos(ref, corrupt, clean_cache, tl_metric),
    }, repeats=max(1, repeats // 2), warmup=1)
    cells = got.numel()
    print(f"\n## head x position activation patching, {cells} cells, {tokens.shape[0]} sequences x {tokens.shape[1]} tokens")
    for k, v in t.items():
        print(f"  {k:8s} {v * 1e3:9.1f} ms   {v / t['batched']:5.1f}x the batched time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--run", type=Path, default=Path("runs/bench/synthetic-2l-fp32-seed0"))
    args = ap.parse_args()
    if not (args.run / "config.json").exists():
        icl_lab.train(icl_lab.get_preset("synthetic-2l"), out=args.run)
    run = icl_lab.load_run(args.run)
    ev = make_eval_set(run)
    model = run.model()
    compare("synthetic-2l, final checkpoint, full evaluation set", model, ev.tokens, args.repeats, with_tl=True)
    compare("synthetic-2l, 16 sequences", model, ev.tokens[:16], args.repeats, with_tl=True)
    # random-weight models of more heads: Olsson et al.'s small attention-only shape (12 heads of
    # 64, d_model 768) at 2 and 3 layers, and a narrower 4-layer model without and with MLPs
    for layers, heads, width, mlp in [(2, 12, 768, 0), (3, 12, 768, 0), (4, 8, 256, 0), (4, 8, 256, 1024)]:
        cfg = icl_lab.ModelConfig(n_layers=layers, n_heads=heads, d_model=width, d_mlp=mlp, d_vocab=2048, n_ctx=128)
        toks = torch.randint(1, cfg.d_vocab, (16, 128), generator=torch.Generator().manual_seed(0))
        name = f"{layers} layers x {heads} heads, d_model {width}, {f'MLP {mlp}' if mlp else 'attention-only'}, random weights"
        compare(name, Transformer(cfg, seed=0).eval(), toks, args.repeats, with_tl=True)

    patching_by_position(model, ev.tokens[:8], args.repeats)

    t = time.perf_counter()
    ablate_run(run)
    print(f"\n## whole table: {len(run.checkpoints)} checkpoints x every head x (zero, mean, resample) x (pattern-preserving, full): "
          f"{time.perf_counter() - t:.1f} s (goal <= 120 s)")


if __name__ == "__main__":
    main()
