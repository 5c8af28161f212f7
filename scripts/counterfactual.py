"""The counterfactual-training findings of docs/counterfactual.md (issue #30): a parent run per seed
and its branches, each holding one intervention during training, analysed and tabulated.

    .venv/bin/python scripts/counterfactual.py synthetic --seeds 0 1 2 --out runs/counterfactual
    .venv/bin/python scripts/counterfactual.py natural --parent runs/reproduce-natural/natural-2l-s3 \
        --only ablate-prev mask-repeats --steps 12000 --out runs/counterfactual
    .venv/bin/python scripts/counterfactual.py table --out runs/counterfactual
    .venv/bin/python scripts/counterfactual.py figure --out runs/counterfactual   # docs/counterfactual.png (matplotlib)

Every family writes OUT/PARENT-compare.html (`icl-lab compare`) and is listed in OUT/families.json. The table prints
each run's phase window, its shift against the parent (95% interval from the windows' bootstrap
intervals), the final ICL score, the best layer-1 prefix matching, the layer-0 previous-token
score and the training speed against the parent's (the interventions' overhead)."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import icl_lab
from icl_lab.report.compare import shift_rows, write_compare
from icl_lab.run import open_run_files
from icl_lab.train.branch import branch

# the synthetic family: release the ablation and freeze the induction head after the parent's phase
# change (synthetic-2l's window ends near step 400 of 1500; fixed before the runs)
SYNTHETIC_RELEASE = 600
SYNTHETIC_FREEZE_FROM = 800


def _heads(run: Path) -> tuple[str, str]:
    """The parent's layer-0 previous-token head and its best layer-1 prefix-matching head, named Lx Hy."""
    heads = icl_lab.load_run(run).summary()["heads"]
    prev = max((h for h in heads if h["layer"] == 0), key=lambda h: h["previous_token"])
    ind = max((h for h in heads if h["layer"] == 1), key=lambda h: h["prefix_matching"])
    return f"L0H{prev['head']}", f"L1H{ind['head']}"


def _nearest_checkpoint(run: Path, step: int) -> int:
    steps = icl_lab.load_run(run).checkpoints
    return min((s for s in steps if s >= step), default=steps[-1])


def family(parent: Path, out: Path, release: int, freeze_from: int, steps: int | None = None,
           only: list[str] | None = None) -> list[Path]:
    """The parent's branches: the previous-token head ablated from step 0 (held, and released at
    `release`), clamped to a perfect previous-token pattern, the loss masked on repeats, and the
    induction head frozen from `freeze_from` on. `steps`: train the branches to this step only;
    `only`: these branches only."""
    if not (parent / "analysis" / "summary.json").is_file():
        icl_lab.analyze([icl_lab.load_run(parent)])
    prev, ind = _heads(parent)
    freeze_from = _nearest_checkpoint(parent, freeze_from)
    specs = {"ablate-prev": (0, f"ablate:{prev}", None), "ablate-prev-release": (0, f"ablate:{prev}", release),
             "clamp-prev": (0, f"clamp-pattern:{prev}=previous-token", None), "mask-repeats": (0, "mask-loss:repeats", None),
             "freeze-ind": (freeze_from, f"freeze:{ind}", None)}
    paths = []
    for name, (start, spec, release_at) in specs.items():
        if only and name not in only:
            continue
        path = out / f"{parent.name}-{name}"
        if not (path / "analysis" / "summary.json").is_file():
            changes = {"train": {"steps": steps}} if steps else None
            branch(parent, start, path, spec, release_at, changes=changes, resume=path.exists())
            icl_lab.analyze([icl_lab.load_run(path)])
        paths.append(path)
    write_compare([parent, *paths], out / f"{parent.name}-compare.html")
    listed = json.loads((out / "families.json").read_text()) if (out / "families.json").is_file() else {}
    listed[str(parent)] = [str(p) for p in paths]
    (out / "families.json").write_text(json.dumps(listed, indent=1))
    return paths


def synthetic(seeds: list[int], out: Path) -> None:
    for seed in seeds:
        parent = out / f"synthetic-2l-s{seed}"
        if not (parent / "analysis" / "summary.json").is_file():
            cfg = icl_lab.get_preset("synthetic-2l").replace(seed=seed, name=f"synthetic-2l-s{seed}")
            icl_lab.analyze([icl_lab.train(cfg, out=parent, resume=parent.exists())])
        family(parent, out, SYNTHETIC_RELEASE, SYNTHETIC_FREEZE_FROM)


def _median_speed(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r.get("step", 0) > 50]
    return statistics.median(speeds) if speeds else math.nan


def _final(run: Path) -> dict:
    s = icl_lab.load_run(run).summary()
    heads = s["heads"]
    return {"icl": s["icl_score"]["final"], "pm": max(h["prefix_matching"] for h in heads if h["layer"] == 1),
            "prev": max(h["previous_token"] for h in heads if h["layer"] == 0),
            "induction": ", ".join(f"L{h['layer']}H{h['head']}" for h in s["induction_heads"]) or "none"}


def table(out: Path) -> None:
    def k(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x / 1e3:,.0f}k"
    families = json.loads((out / "families.json").read_text())
    print("| run | intervention | window (tokens) | shift of the start [95%] | final ICL | best L1 PM | L0 prev-token | induction heads "
          "| speed vs parent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for parent, branches in families.items():
        parent, runs = Path(parent), [Path(parent), *map(Path, branches)]
        base_speed = _median_speed(parent)
        for row, path in zip(shift_rows([open_run_files(r) for r in runs]), runs):
            fork, f = row["fork"], _final(path)
            until = f" until {fork['until']}" if fork and fork.get("until") else ""
            what = "-" if not fork else f"{fork['intervention']} from {fork['step']}" + until
            ci = f" [{k(row['shift_ci'][0])}, {k(row['shift_ci'][1])}]" if row["shift_ci"] else ""
            window = "none" if math.isnan(row["start"]) else f"{k(row['start'])}-{k(row['end'])}"
            print(f"| {path.name} | {what} | {window} | {k(row['shift'])}{ci} | {f['icl']:+.2f} | {f['pm']:.2f} | {f['prev']:.2f} "
                  f"| {f['induction']} | {_median_speed(path) / base_speed:.2f}x |")


def figure(out: Path, png: Path = Path("docs/counterfactual.png")) -> None:
    """Best layer-1 prefix matching and the ICL score against tokens for every family (one column
    per parent), each branch a line, the fork and release marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = json.loads((out / "families.json").read_text())
    fig, axes = plt.subplots(2, len(families), figsize=(4.4 * len(families), 6.4), sharex=True, squeeze=False)
    for col, (parent, branches) in enumerate(families.items()):
        for i, path in enumerate([parent, *branches]):
            table = icl_lab.load_run(path).metrics()
            name = Path(path).name.removeprefix(Path(parent).name + "-") if i else "parent"
            pm = table[(table.metric == "prefix_matching") & (table.layer == 1)].groupby("tokens").value.max()
            icl = table[table.metric == "icl_score"].groupby("tokens").value.mean()
            for row, series in enumerate((pm, icl)):
                axes[row, col].plot(series.index.to_numpy().clip(min=1), series.values, label=name, color=f"C{i}", lw=1.4)
        per_step = icl_lab.load_run(parent).config.train.batch_size * icl_lab.load_run(parent).config.model.n_ctx
        for row in range(2):
            axes[row, col].axvline(SYNTHETIC_RELEASE * per_step, color="grey", ls=":", lw=1)
            axes[row, col].set_xscale("log")
        axes[0, col].set_title(Path(parent).name)
        axes[1, col].set_xlabel("tokens seen")
    axes[0, 0].set_ylabel("best layer-1 prefix matching")
    axes[1, 0].set_ylabel("ICL score (nats)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Branches from step 0 (freeze-ind from step ~800); dotted: the ablation's release at step 600")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("synthetic", "natural", "table", "figure"))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--parent", type=Path, help="natural: an analysed natural-2l run to branch")
    parser.add_argument("--steps", type=int, help="natural: train the branches to this step only")
    parser.add_argument("--only", nargs="*", help="natural: these branches only (ablate-prev, ablate-prev-release, ...)")
    parser.add_argument("--out", type=Path, default=Path("runs/counterfactual"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "synthetic":
        synthetic(args.seeds, args.out)
    elif args.what == "natural":
        # the natural family: release at 12k steps (12.3M tokens, after the seeds' phase windows), freeze from 16k
        family(args.parent.resolve(), args.out, 12000, 16000, args.steps, args.only)
    if args.what == "figure":
        figure(args.out)
    else:
        table(args.out)


if __name__ == "__main__":
    main()
