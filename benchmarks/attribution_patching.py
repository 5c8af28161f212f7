"""Attribution patching against batched activation patching, on the same model and inputs.

For `synthetic-2l` (runs/demo/synthetic-2l if `make demo` trained it, else trained here into a
temporary folder) and a 4-layer x 8-head attention-only model (synthetic-2l's data and width,
trained here), on induction inputs (`[BOS] s s`, corrupted by resampling the first `s`):

  activation   icl_lab.intervene.patch_heads / patch_residual: one batched copy per cell
  attribution  attribution_patch_heads / attribution_patch_residual: one forward and backward
  AtP-IG       the same with steps=4 (integrated gradients from the corrupted to the clean embedding)

for every head, every (head, position) and every (layer, position) of the residual stream, under two
metrics: the second copy's correct-token logit minus the mean logit (linear in the logits) and its
log-probability. Prints median times (interleaved), their ratio, and Spearman's rank correlation
of each estimate with activation patching, overall and per layer.

    OMP_NUM_THREADS=1 python benchmarks/attribution_patching.py [--repeats 5] [--steps-4x8 1500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import icl_lab
from icl_lab.intervene import (
    attribution_patch_heads, attribution_patch_residual, patch_heads, patch_residual, rank_correlation,
)
from icl_lab.measure import prefix_matching_scores, repeated_random_tokens

from common import median_times

DEMO = Path(__file__).resolve().parents[1] / "runs" / "demo" / "synthetic-2l"


def induction_pair(d_vocab: int, n_ctx: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, int]:
    clean, seg = repeated_random_tokens(d_vocab, n_ctx, seg_len=n_ctx, n_repeats=2, n_examples=n, seed=0)
    other, _ = repeated_random_tokens(d_vocab, n_ctx, seg_len=n_ctx, n_repeats=2, n_examples=n, seed=1)
    corrupted = clean.clone()
    corrupted[:, 1 : 1 + seg] = other[:, 1 : 1 + seg]
    return clean, corrupted, seg


def metrics(seg: int) -> dict:
    def logit(logits, tokens):
        x = logits[:, :-1]
        return (x.gather(-1, tokens[:, 1:, None])[..., 0] - x.mean(-1))[:, seg + 1 :].mean(1)

    def log_prob(logits, tokens):
        return logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0][:, seg + 1 :].mean(1)

    return {"logit": logit, "log-prob": log_prob}


def models(steps_4x8: int, tmp: Path) -> dict:
    if (DEMO / "config.json").exists():
        two = icl_lab.load_run(DEMO)
    else:
        two = icl_lab.train(icl_lab.get_preset("synthetic-2l"), out=tmp / "synthetic-2l")
    wide = icl_lab.get_preset("synthetic-2l").replace(
        train={"steps": steps_4x8, "n_checkpoints": 2}, model={"n_layers": 4, "n_heads": 8, "d_head": 8})
    four = icl_lab.train(wide, out=tmp / "attn-4x8")
    return {f"synthetic-2l ({two.checkpoints[-1]} steps)": two.model().eval(),
            f"4x8 attn-only ({steps_4x8} steps)": four.model().eval()}


def compare(name: str, model, repeats: int) -> None:
    clean, corrupted, seg = induction_pair(model.cfg.d_vocab, model.cfg.n_ctx)
    prefix = prefix_matching_scores(model)  # [layer, head]
    best = divmod(int(prefix.argmax()), model.cfg.n_heads)
    print(f"\n== {name}: {model.cfg.n_layers} x {model.cfg.n_heads} heads, tokens {tuple(clean.shape)}; "
          f"best prefix-matching head L{best[0]}H{best[1]} {float(prefix.max()):.2f}")
    cells = {
        "heads": (lambda m: patch_heads(model, clean, corrupted, m),
                  lambda m, s: attribution_patch_heads(model, clean, corrupted, m, steps=s)),
        "head x pos": (lambda m: patch_heads(model, clean, corrupted, m, per_position=True),
                       lambda m, s: attribution_patch_heads(model, clean, corrupted, m, per_position=True, steps=s)),
        "resid (layer x pos)": (lambda m: patch_residual(model, clean, corrupted, m),
                                lambda m, s: attribution_patch_residual(model, clean, corrupted, m, steps=s)),
    }
    print(f"{'cells':<20}{'metric':<10}{'act s':>9}{'AtP s':>9}{'ratio':>7}{'rho AtP':>9}{'rho IG4':>9}  rho AtP per layer")
    for cell, (act_fn, atp_fn) in cells.items():
        for metric_name, metric in metrics(seg).items():
            times = median_times({"act": lambda: act_fn(metric), "atp": lambda: atp_fn(metric, 1)}, repeats=repeats, warmup=1)
            act, atp, ig = act_fn(metric), atp_fn(metric, 1), atp_fn(metric, 4)
            rho = rank_correlation(act, atp) if act.numel() > 2 else float("nan")
            rho_ig = rank_correlation(act, ig) if act.numel() > 2 else float("nan")
            per_layer = " ".join(f"{rank_correlation(a, b):.2f}" if a.numel() > 2 else "-" for a, b in zip(act, atp))
            print(f"{cell:<20}{metric_name:<10}{times['act']:>9.4f}{times['atp']:>9.4f}{times['act'] / times['atp']:>7.1f}"
                  f"{rho:>9.3f}{rho_ig:>9.3f}  {per_layer}")
            if act.numel() <= 2:
                print(f"{'':<20}{'':<10}  act {[round(v, 3) for v in act.flatten().tolist()]}, "
                      f"AtP {[round(v, 3) for v in atp.flatten().tolist()]}, IG4 {[round(v, 3) for v in ig.flatten().tolist()]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-4x8", type=int, default=1500)  # past its phase change (PM 0.83)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models(args.steps_4x8, Path(tmp)).items():
            compare(name, model, args.repeats)


if __name__ == "__main__":
    main()
