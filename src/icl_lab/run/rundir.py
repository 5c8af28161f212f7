"""`Run`: a finished (or running) run directory opened for analysis. It reads what the trainer
wrote — config, metadata, training log, checkpoints — and rebuilds the model at any step.

Example:
    >>> run = icl_lab.load_run("runs/synthetic-2l")
    >>> run.checkpoints[:5]          # steps with a checkpoint
    >>> model = run.model(step=500)  # a Transformer with that step's weights
    >>> run.log.plot(x="tokens", y="loss_repeat", logx=True)
"""

from __future__ import annotations

from pathlib import Path

from icl_lab.data.text import load_tokens
from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import CheckpointError, DataError
from icl_lab.model.transformer import Transformer
from icl_lab.run.files import RunFiles
from icl_lab.train.checkpoint import load_weights_into


class Run(RunFiles):
    """A run directory with its models. Build one with `load_run(path)`; everything but `model`
    comes from `RunFiles`."""

    def model(self, step: int | None = None, device: str = "cpu") -> Transformer:
        """The model with the weights of checkpoint `step` (default: the latest), in eval mode.

        Raises:
            CheckpointError: no such checkpoint; the message lists the nearest ones.
        """
        steps = self.checkpoints
        if not steps:
            raise CheckpointError(f"{self.path} has no checkpoints yet; train it or pass another run")
        if step is None:
            step = steps[-1]
        if step not in steps:
            near = sorted(steps, key=lambda s: abs(s - step))[:3]
            raise CheckpointError(f"no checkpoint at step {step} in {self.path.name}; nearest: {sorted(near)}")
        model = Transformer(self.config.model).to(device)
        load_weights_into(model, self.layout.checkpoint(step))
        return model.eval()


def load_run(path: str | Path) -> Run:
    """Open a run directory.

    Args:
        path: a directory written by `icl_lab.train` / `icl-lab train`.

    Returns:
        A `Run` with `.config`, `.meta`, `.checkpoints`, `.model(step=...)` and `.log`.

    Raises:
        CheckpointError: the directory is missing or not a run.
    """
    return Run(path)


def check_eval_data(run: Run) -> None:
    """Check that the text a text run is evaluated on is the text it was trained or imported with.

    Compares what `load_tokens(run.config.data, d_vocab)` gives (its tokenizer, and the windows'
    data fingerprint: corpus x tokenizer x BOS) with what meta.json recorded at training or import
    time. Synthetic runs, and runs from before meta.json kept a record, pass.

    Example:
        >>> check_eval_data(load_run("runs/natural-2l-seed0"))   # before measuring on its text

    Raises:
        DataError: the tokenizer, the BOS or the corpus differs; the one-line message names the fix.
    """
    cfg, meta = run.config.data, run.meta
    tok_fp, data_fp = meta.get("tokenizer_fingerprint"), meta.get("data_fingerprint")
    if cfg.kind != "text" or (tok_fp is None and data_fp is None):
        return
    tokens = load_tokens(cfg, run.config.model.d_vocab)
    name, now = run.path.name, tokens.tokenizer.fingerprint()
    if tok_fp is not None and now != tok_fp:
        source = f"data.tokenizer_file ({cfg.tokenizer_file})" if cfg.tokenizer_file else f"data.tokenizer={cfg.tokenizer!r}"
        own = run.layout.tokenizer
        fix = (f"set data.tokenizer_file in its config.json to {own.resolve()}"
               if own.is_file() and Tokenizer.load(own).fingerprint() == tok_fp
               else "restore the tokenizer it was made with, or import or train it again")
        raise DataError(f"{name} was made with tokenizer {tok_fp} but {source} gives {now}; {fix}")
    if data_fp is None or tokens.data_fingerprint == data_fp:
        return
    if "bos_id" in meta:  # the BOS its training windows started with
        was = meta["bos_id"]
    else:  # runs from before BOS: the token arrays alone match when only the BOS differs
        was = None if tokens.fingerprint == data_fp else tokens.bos
    if was != tokens.bos:
        fix = "set data.prepend_bos to false" if was is None else f"set data.bos_id to {was} and data.prepend_bos to true"
        raise DataError(f"{name} was trained on windows {_start(was)} but would be evaluated on windows {_start(tokens.bos)}; "
                        f"{fix} in its config.json")
    raise DataError(f"{name}'s evaluation text differs from its training text (data fingerprint {tokens.data_fingerprint}, "
                    f"recorded {data_fp}): corpus {cfg.corpus!r} changed; restore it or train the run again")


def _start(bos: int | None) -> str:
    return "with no BOS" if bos is None else f"starting with token {bos}"
