"""What torchrun starts in tests/train/test_ddp.py: train a config (JSON on the command line) into a
run directory, optionally stopping every rank at a step (as a crash would) or resuming."""

import json
import sys

import torch

from icl_lab.train import ExperimentConfig
from icl_lab.train.trainer import fit


class Interrupt(Exception):
    pass


def main() -> None:
    config, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    cfg = ExperimentConfig.parse(json.loads(config))
    stop = int(mode.removeprefix("stop-at-")) if mode.startswith("stop-at-") else None

    def progress(step, total, rec):
        if step == stop:
            raise Interrupt

    fit(cfg, out, resume=mode == "resume", progress=progress)


if __name__ == "__main__":
    main()
