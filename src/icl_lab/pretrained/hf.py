"""Import a Hugging Face model folder (config.json plus model.safetensors, or pytorch_model.bin
read with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects) as an
icl-lab run directory with one weights-only checkpoint.

How each family's weights map onto the icl-lab transformer is in `icl_lab.pretrained.families`.

Example:
    >>> run = import_model("models/gpt2", out="runs/gpt2")
    >>> run.model().logits(tokens)
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.io import write_json
from icl_lab.model.transformer import Transformer
from icl_lab.pretrained.families import FAMILIES
from icl_lab.run.rundir import Run, load_run
from icl_lab.train.checkpoint import save_weights
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.layout import RunLayout
from icl_lab.train.trainer import library_versions


def read_hf_folder(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(config.json as a dict, the state dict) of a local Hugging Face model folder.

    Raises:
        CheckpointError: no config.json, no weights, or a .bin that holds more than tensors.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json; pass a Hugging Face model folder (config.json + weights)")
    config = json.loads((path / "config.json").read_text())
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        from safetensors.torch import load_file

        weights: dict[str, Tensor] = {}
        for shard in shards:
            weights |= load_file(str(shard))
        return config, weights
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(f"{path} has no *.safetensors or pytorch_model*.bin weights")
    weights = {}
    for b in bins:
        try:
            weights |= torch.load(b, map_location="cpu", weights_only=True)  # tensors only: no code runs on load
        except Exception as e:  # noqa: BLE001 — torch raises several types for a file it refuses
            raise CheckpointError(f"{b.name} is not a plain tensor file ({str(e).splitlines()[0][:100]}); convert it to safetensors") from None
    return config, weights


def import_model(path: str | Path, out: str | Path) -> Run:
    """Convert the Hugging Face model folder `path` into the run directory `out`.

    The run's config holds the model and, for text analysis, the bundled literary corpus with
    the GPT-2 tokenizer; meta.json records where the weights came from.

    Raises:
        ConfigError: an unsupported `model_type`, or `out` already holds a run.
        CheckpointError: the folder's weights are missing, unreadable or do not fit its config.
    """
    path, out = Path(path), Path(out)
    hf_config, weights = read_hf_folder(path)
    family = hf_config.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(f"model_type {family!r} cannot be imported yet; supported: {', '.join(FAMILIES)}")
    layout = RunLayout(out)
    if layout.config.exists():
        raise ConfigError(f"{out} already holds a run; choose another --out")
    make_config, convert = FAMILIES[family]
    cfg = make_config(hf_config)
    model = Transformer(cfg)
    try:
        model.load_state_dict(convert(weights, cfg))
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not hold a complete {family} model ({str(e).splitlines()[0][:120]})") from None
    experiment = ExperimentConfig.parse(dict(
        name=f"import-{path.name}", model=cfg.model_dump(),
        data=dict(kind="text", corpus="literary", tokenizer="gpt2" if cfg.d_vocab >= 50257 else "bpe"),
        train=dict(steps=1, warmup_steps=0, n_checkpoints=2)), where="imported run")
    write_json(layout.config, experiment.model_dump(mode="json"))
    save_weights(layout.checkpoint(0), model, source=str(path.resolve()))
    write_json(layout.meta, {"seed": None, "imported_from": str(path.resolve()), "family": family,
                             "versions": library_versions(), "status": "complete",
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return load_run(out)
