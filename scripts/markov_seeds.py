"""Train markov-2l on three seeds and print each run's stages, the statistical induction head and
the wall time: the check that the preset shows uniform -> unigram -> bigram within 5 minutes on
2 cores (docs/organisms.md). Reuses finished runs; `--out` holds them.

    python scripts/markov_seeds.py [--out runs/markov] [--seeds 0 1 2] [--steps N]
"""

from __future__ import annotations

import argparse
import json

from icl_lab.organisms.markov import run_markov


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/markov")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    for seed in args.seeds:
        r = run_markov(seed=seed, out=args.out, steps=args.steps)
        s = r.summary
        stages = ", ".join(f"{st['stage']} {st['start']}-{st['end']}" for st in s["stages"])
        print(json.dumps({"seed": seed, "seconds": round(r.seconds, 1), "trained": r.trained, "in_order": s["in_order"],
                          "reaches_bigram": s["reaches_bigram"], "sih": round(s["sih"]["score"], 3),
                          "chance": round(s["sih"]["chance"], 3)}))
        print(f"  stages: {stages}")


if __name__ == "__main__":
    main()
