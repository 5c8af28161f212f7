"""The natural-text ladder (issue #16, docs/natural-phase-change.md): train one rung at a time and
measure every checkpoint with the signals of `icl_lab.measure.text_signals` (prefix matching and
copying on random tokens, previous-token score on text, the repeated-passage gain, the ICL score).

    .venv/bin/python scripts/natural_ladder.py train B-code --max-minutes 12
    .venv/bin/python scripts/natural_ladder.py measure runs/some-run --rung name   # post hoc
    .venv/bin/python scripts/natural_ladder.py table                               # markdown
    .venv/bin/python scripts/natural_ladder.py throughput aoyama                   # tokens/s only
    .venv/bin/python scripts/natural_ladder.py figure                              # docs/natural-ladder.png

Each rung is its parent plus one change. A rung stops early once an induction head (#10's rule)
and an ICL score <= -0.3 nats have held for three checkpoints in a row; it also stops at
--max-minutes (the run's meta.json then says it was stopped, and why). Rows go to
RUN/ladder.jsonl, one per checkpoint, each with the tokens seen and the wall time."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import icl_lab
from icl_lab.data.text import load_tokens
from icl_lab.measure.text_signals import best, make_text_probe, text_signals

OUT = Path("runs/ladder")
ICL_DROP = -0.3
_B = dict(  # probe B of the earlier search: the first configuration whose layer-1 prefix matching moved
    model=dict(n_layers=2, d_model=128, n_heads=4, d_vocab=512, n_ctx=64, d_mlp=512, positional="learned",
               normalization="layernorm", bias=True),
    data=dict(kind="text", corpus="technical", tokenizer="bpe"),
    train=dict(steps=200_000, batch_size=16, lr=1e-3, warmup_steps=500, schedule="constant", log_every=50,
               n_checkpoints=200),
)
# rung -> (parent, what changes, overrides)
RUNGS: dict[str, tuple[str | None, str, dict]] = {
    "B": (None, "probe B: d128, 4 heads of 32, LayerNorm, MLP 512, technical prose, ctx 64 x 16, lr 1e-3", {}),
    "B-ctx256": ("B", "context 256 x batch 4 (same tokens per step)", {"model": {"n_ctx": 256}, "train": {"batch_size": 4}}),
    "B-ctx256-code": ("B-ctx256", "Python source instead of prose", {"data": {"corpus": "code"}}),
    "B-ctx256-mix": ("B-ctx256", "technical prose and Python source", {"data": {"corpus": "mix"}}),
    "B-ctx256-code-lr3": ("B-ctx256-code", "lr 3e-3", {"train": {"lr": 3e-3}}),
    "B-ctx256-code-lr3-2h": ("B-ctx256-code-lr3", "2 heads of 64 per layer", {"model": {"n_heads": 2}}),
    "B-ctx256-code-lr3-cosine": ("B-ctx256-code-lr3", "cosine decay to 0.1x over 20k steps (20.5M tokens)",
                             {"train": {"schedule": "cosine", "steps": 20000}}),
    "B-ctx256-code-rotary": ("B-ctx256-code", "rotary positions", {"model": {"positional": "rotary"}}),
    "B-ctx256-code-d64": ("B-ctx256-code", "d64, 2 heads of 32, MLP 256", {"model": {"d_model": 64, "n_heads": 2, "d_mlp": 256}}),
    "B-ctx256-code-1l": ("B-ctx256-code", "one layer (the control)", {"model": {"n_layers": 1}}),
    "B-code": ("B", "Python source instead of prose (context 64)", {"data": {"corpus": "code"}}),
    "aoyama": (None, "Aoyama et al.'s shape: d768, 8 heads, MLP 3072, LayerNorm, ctx 64 x 16, lr 2.5e-4",
               {"model": {"d_model": 768, "n_heads": 8, "d_mlp": 3072}, "train": {"lr": 2.5e-4}}),
}


def rung_config(name: str, seed: int = 0) -> icl_lab.ExperimentConfig:
    """The full config of a rung: B's, then each ancestor's overrides, oldest first."""
    chain, at = [], name
    while at is not None:
        parent, _, over = RUNGS[at]
        chain.append(over)
        at = parent
    cfg = json.loads(json.dumps(_B))
    for over in reversed(chain):
        for section, values in over.items():
            cfg[section].update(values)
    return icl_lab.ExperimentConfig.parse({"name": f"ladder-{name}", "seed": seed, **cfg})


def _probe(cfg: icl_lab.ExperimentConfig):
    ts = load_tokens(cfg.data, cfg.model.d_vocab)
    return make_text_probe(ts.val, cfg.model.n_ctx, cfg.model.d_vocab, ts.bos)


def _row(run_dir: Path, cfg, probe, step: int, tokens: int, elapsed: float) -> dict:
    model = icl_lab.load_run(run_dir).model(step=step).eval()
    return {"step": step, "tokens": tokens, "elapsed_s": round(elapsed, 1), **text_signals(model, probe)}


def _done(rows: list[dict]) -> bool:
    last = rows[-3:]
    return len(last) == 3 and all(r["induction_heads"] and r["icl"] <= ICL_DROP for r in last)


class _Stop(Exception):
    """Raised from the progress callback to end a rung early; the trainer records it in meta.json."""


def train_rung(name: str, seed: int, max_minutes: float, threads: int) -> Path:
    torch.set_num_threads(threads)
    cfg = rung_config(name, seed)
    out = OUT / f"{name}-s{seed}"
    probe, rows, t0 = _probe(cfg), [], time.time()
    tokens_per_step = cfg.train.batch_size * cfg.model.n_ctx

    def progress(step: int, total: int, rec) -> None:
        if not (out / "checkpoints" / f"step_{step:07d}.safetensors").is_file() or (rows and rows[-1]["step"] == step):
            return
        rows.append(_row(out, cfg, probe, step, step * tokens_per_step, time.time() - t0))
        r = rows[-1]
        print(f"{r['tokens'] / 1e6:6.1f}M {r['elapsed_s']:5.0f}s loss {rec.loss:.3f} PM L1 {best(r['prefix_matching'], -1):.2f} "
              f"copy {best(r['copying'], -1):.2f} prev(text) L0 {best(r['prev_token_text'], 0):.2f} "
              f"passage {r['passage_first']:.2f}->{r['passage_second']:.2f} ICL {r['icl']:+.2f} ind {r['induction_heads']}",
              flush=True)
        (out / "ladder.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        if _done(rows):
            raise _Stop("ladder: induction head and ICL drop held for 3 checkpoints")
        if time.time() - t0 > 60 * max_minutes:
            raise _Stop(f"ladder: time budget of {max_minutes} min reached")

    try:
        icl_lab.train(cfg, out=out, progress=progress)
    except _Stop as e:
        print(e)
    return out


def measure_run(run_dir: Path, rung: str) -> None:
    """Post hoc: the signals of every checkpoint of an existing run (wall time from its log)."""
    run = icl_lab.load_run(run_dir)
    cfg, probe = run.config, _probe(run.config)
    log = run.log.set_index("step")
    rows = []
    for step in run.checkpoints:
        if step == 0:
            continue
        elapsed = float(log["elapsed_s"].asof(step)) if "elapsed_s" in log else float("nan")
        rows.append(_row(run_dir, cfg, probe, step, step * cfg.train.batch_size * cfg.model.n_ctx, elapsed))
    (run_dir / "ladder.jsonl").write_text("".join(json.dumps({**x, "rung": rung}) + "\n" for x in rows))
    print(f"{len(rows)} checkpoints -> {run_dir / 'ladder.jsonl'}")


def throughput(name: str, threads: int, steps: int = 10, repeats: int = 5) -> float:
    """Median training tokens/s of a rung's model on its own data (for rungs too slow to train here)."""
    from icl_lab.data import open_stream
    from icl_lab.model import Transformer

    torch.set_num_threads(threads)
    cfg = rung_config(name)
    model = Transformer(cfg.model, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=True)
    stream = open_stream(cfg.data, cfg.model.d_vocab, cfg.model.n_ctx, cfg.train.batch_size, 0)

    def step() -> None:
        model.loss(stream.next().tokens).backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - t0)
    tps = steps * cfg.train.batch_size * cfg.model.n_ctx / sorted(times)[repeats // 2]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params / 1e6:.1f}M parameters, median {tps:,.0f} tokens/s on {threads} threads; "
          f"16M tokens take {16e6 / tps / 3600:.1f} h")
    return tps


def _first(rows: list[dict], test) -> str:
    hit = next((r for r in rows if test(r)), None)
    return f"{hit['tokens'] / 1e6:.1f}M" if hit else f"none by {rows[-1]['tokens'] / 1e6:.0f}M"


def _held(rows: list[dict], test) -> str:
    """Tokens from which `test` holds at every later checkpoint (the ICL score at two positions
    over 64 windows moves by ~0.3 nats from noise, so a single crossing means little)."""
    since = None
    for r in rows:
        since = (since or r) if test(r) else None
    return f"{since['tokens'] / 1e6:.1f}M" if since else f"none by {rows[-1]['tokens'] / 1e6:.0f}M"


def table(root: Path = OUT) -> str:
    lines = ["| rung | change | tokens/s | previous-token head (text > 0.5) | PM L1 > 0.3 | induction head (#10 rule) | "
             "ICL <= -0.3 from | best PM L1 | passage gain at end | wall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = list(RUNGS)
    for path in sorted(root.glob("*/ladder.jsonl"), key=lambda p: (order.index(n) if (n := p.parent.name.rsplit("-s", 1)[0]) in order
                                                                 else len(order), p.parent.name)):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        name = path.parent.name.rsplit("-s", 1)[0]
        change = RUNGS[name][1] if name in RUNGS else rows[0].get("rung", "")
        tps = rows[-1]["tokens"] / rows[-1]["elapsed_s"]
        lines.append(f"| {name} | {change} | {tps / 1e3:.0f}k | {_first(rows, lambda r: r['prev_token_heads'])} | "
                     f"{_first(rows, lambda r: best(r['prefix_matching'], -1) > 0.3)} | "
                     f"{_first(rows, lambda r: r['induction_heads'])} | {_held(rows, lambda r: r['icl'] <= ICL_DROP)} | "
                     f"{max(best(r['prefix_matching'], -1) for r in rows):.2f} | {rows[-1]['passage_gain']:+.2f} | "
                     f"{rows[-1]['elapsed_s'] / 60:.0f} min |")
    return "\n".join(lines)


def figure(out: Path, root: Path = OUT) -> None:
    """The ladder's signals against tokens, one line per rung (needs matplotlib: the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("best layer-1 prefix matching", lambda r: best(r["prefix_matching"], -1)),
              ("best layer-0 previous-token score on text", lambda r: best(r["prev_token_text"], 0)),
              ("repeated passage: first copy - second (nats)", lambda r: r["passage_gain"]),
              ("ICL score on validation text (nats)", lambda r: r["icl"]))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    order = list(RUNGS)
    for path in sorted(root.glob("*/ladder.jsonl"), key=lambda p: order.index(p.parent.name.rsplit("-s", 1)[0])):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        rows = [r for r in rows if r["tokens"] >= 1e5]
        for ax, (title, get) in zip(axes, panels):
            ax.plot([r["tokens"] for r in rows], [get(r) for r in rows], label=path.parent.name.rsplit("-s", 1)[0], lw=1.2)
            ax.set_title(title, fontsize=10)
            ax.set_xscale("log")
            ax.set_xlabel("tokens seen")
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[1].axhline(0.5, color="grey", ls=":", lw=1)
    axes[3].axhline(ICL_DROP, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("rung", choices=sorted(RUNGS))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float, default=15)
    t.add_argument("--threads", type=int, default=2)
    m = sub.add_parser("measure")
    m.add_argument("run", type=Path)
    m.add_argument("--rung", required=True)
    sub.add_parser("table")
    f = sub.add_parser("figure")
    f.add_argument("--out", type=Path, default=Path("docs/natural-ladder.png"))
    tp = sub.add_parser("throughput")
    tp.add_argument("rung", choices=sorted(RUNGS))
    tp.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "train":
        train_rung(args.rung, args.seed, args.max_minutes, args.threads)
    elif args.cmd == "figure":
        figure(args.out)
    elif args.cmd == "throughput":
        throughput(args.rung, args.threads)
    elif args.cmd == "measure":
        measure_run(args.run, args.rung)
    else:
        print(table())


if __name__ == "__main__":
    main()
