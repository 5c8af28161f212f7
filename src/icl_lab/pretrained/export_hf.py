"""Export an icl-lab model to a Hugging Face `transformers` folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json) that `AutoModelForCausalLM` and
`AutoTokenizer` load offline, with the same logits: the inverse of `icl-lab import`, in the
pretrained stage. Each model maps onto one of three architectures, or is refused in one line:

- learned positions, LayerNorm or none, ungated, sequential blocks -> **GPT-2** (`GPT2LMHeadModel`);
- rotary positions, LayerNorm or none, ungated -> **GPT-NeoX** (parallel or sequential blocks);
- rotary positions, RMSNorm, a gated silu MLP, no biases, rotary on the whole head -> **Llama**.

Shortformer positions (no architecture adds positions to the query and key inputs only) and
smeared keys have no equivalent and are refused.

GPT-2 and GPT-NeoX get these exactness tricks, so that models they cannot express directly still
export with the same logits:

- **Replication.** The exported residual stream holds r copies of icl-lab's, x' = [x, x, ...]
  (width r·d_model): every write (embeddings, attention and MLP outputs, their biases) writes all
  copies, and every read (queries, keys, values, MLP input) reads the first copy only. A LayerNorm
  of [x, x] has the mean and variance of x, so it is [LN(x), LN(x)]: exact. r is the smallest
  that gives n_heads a head width r·d_model / n_heads ≥ d_head; each head uses the first d_head
  dimensions of its exported width (the rest zero) and W_Q is scaled by sqrt(width / d_head), so
  the exported 1/sqrt(width) attention scale is icl-lab's 1/sqrt(d_head).
- **A constant channel for b_U.** Neither lm_head has a bias. When b_U is not zero, r ≥ 2 and one
  channel of the second copy leaves the final LayerNorm as a constant 1 (weight 0, bias 1); the
  lm_head column of that channel is b_U, so logits = LN(x) W_U + b_U exactly.
- **A mirror for models without normalization.** x' = [x, -x]: its mean is exactly 0 and its
  variance is mean(x²), so a LayerNorm with epsilon E = 1e12 and weight sqrt(E) returns
  x' / sqrt(1 + mean(x²)/E): x' to a relative error mean(x²)/(2E), under 1e-8 for residual mean
  squares under 1e4, and in fp32 the identity to rounding. Near-exact, not algebraically exact.
- **Attention-only models** get an MLP of width 1 with zero weights, whose output is exactly 0.

The export checks itself: it loads the written folder with transformers, compares logits on
random tokens (in fp32 and in fp64) and the tokenizer on a sample text, and moves the folder into
place only if the fp64 logits agree to 1e-4. Its config.json records the provenance under "icl_lab".

Example:
    >>> export_hf("runs/synthetic-2l", "exports/synthetic-2l")
    >>> transformers.AutoModelForCausalLM.from_pretrained("exports/synthetic-2l")
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.io import write_json, write_safetensors, write_text
from icl_lab.model.config import ModelConfig
from icl_lab.model.transformer import Transformer
from icl_lab.pretrained.export_tokenizer import same_ids, tokenizer_config, tokenizer_json
from icl_lab.pretrained.export_weights import MIRROR_EPS, gpt2_weights, llama_weights, neox_weights, partial_factor, residual
from icl_lab.run.rundir import Run, load_run
from icl_lab.train.trainer import library_versions

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM"}
TOLERANCE = 1e-4  # max |logit difference| an export may have
# Every ModelConfig option this export knows; any other with a non-default value is refused, so a
# new option never exports as a different model. init_std and loss_dtype do not change the logits.
_KNOWN_OPTIONS = frozenset({
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "positional", "normalization", "norm_eps",
    "bias", "smeared_key", "act_fn", "gated_mlp", "parallel_attn_mlp", "init_std", "rotary_base", "rotary_dim", "loss_dtype",
})


def _unmet(checks: dict[str, bool]) -> str:
    return ", ".join(name for name, ok in checks.items() if not ok)


def architecture(cfg: ModelConfig) -> str:
    """The Hugging Face `model_type` a model exports as: "gpt2", "gpt_neox" or "llama".

    Raises:
        ConfigError: the model has no exact equivalent; the message says why and what would export.
    """
    for name, field in type(cfg).model_fields.items():
        if name not in _KNOWN_OPTIONS and getattr(cfg, name) != field.default:
            raise ConfigError(f"option {name}={getattr(cfg, name)!r} is not supported by the Hugging Face export; "
                              "export a model with its default")
    if cfg.smeared_key:
        raise ConfigError("smeared-key models have no Hugging Face equivalent (no architecture mixes each key with the one "
                          "before); export a model without smeared_key")
    if cfg.positional == "shortformer":
        raise ConfigError("shortformer positions have no Hugging Face equivalent (no architecture adds positions to the "
                          "query and key inputs only); export a model with learned (GPT-2) or rotary (GPT-NeoX, Llama) positions")
    if cfg.positional == "learned":
        unmet = _unmet({"LayerNorm or no normalization": cfg.normalization != "rmsnorm", "an ungated MLP": not cfg.gated_mlp,
                        "sequential attention and MLP": not cfg.parallel_attn_mlp})
        if unmet:
            raise ConfigError(f"learned positions export as GPT-2, which needs {unmet}; this model differs there")
        return "gpt2"
    if cfg.gated_mlp or cfg.normalization == "rmsnorm":
        unmet = _unmet({"RMSNorm": cfg.normalization == "rmsnorm", "a gated MLP": cfg.gated_mlp, "act_fn silu": cfg.act_fn == "silu",
                        "no biases": not cfg.bias, "rotary on the whole head (rotary_dim 0)": cfg.rotary_dims == cfg.d_head,
                        "sequential attention and MLP": not cfg.parallel_attn_mlp})
        if unmet:
            raise ConfigError(f"rotary models with RMSNorm or a gated MLP export as Llama, which needs {unmet}; "
                              "an ungated LayerNorm model would export as GPT-NeoX")
        return "llama"
    return "gpt_neox"


def _hf_model(model: Transformer, bos: int | None, eot: int | None):
    """(transformers config, state dict, Residual or None) of the export of `model`.

    Raises:
        ConfigError: the model has no exact equivalent (see `architecture`).
    """
    import transformers

    cfg, arch = model.cfg, architecture(model.cfg)
    common = dict(vocab_size=cfg.d_vocab, bos_token_id=bos, eos_token_id=eot, pad_token_id=None, tie_word_embeddings=False)
    if arch == "llama":
        hf = transformers.LlamaConfig(
            hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_heads, head_dim=cfg.d_head, hidden_act="silu", max_position_embeddings=cfg.n_ctx,
            rms_norm_eps=cfg.norm_eps, attention_bias=False, mlp_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rotary_base}, **common)
        return hf, llama_weights(model), None
    res = residual(cfg, constant=model.b_U is not None and bool(model.b_U.detach().abs().max() > 0))
    eps = MIRROR_EPS if res.mirror else cfg.norm_eps
    d_mlp = cfg.d_mlp or 1
    if arch == "gpt2":
        hf = transformers.GPT2Config(
            n_embd=res.width, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=d_mlp, n_positions=cfg.n_ctx,
            activation_function=cfg.act_fn, layer_norm_epsilon=eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, **common)
        return hf, gpt2_weights(model, res), res
    hf = transformers.GPTNeoXConfig(
        hidden_size=res.width, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, intermediate_size=d_mlp,
        hidden_act=cfg.act_fn, max_position_embeddings=cfg.n_ctx, layer_norm_eps=eps, use_parallel_residual=cfg.parallel_attn_mlp,
        hidden_dropout=0.0, attention_dropout=0.0, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rotary_base,
                         "partial_rotary_factor": partial_factor(cfg.rotary_dims, res.head_width)}, **common)
    return hf, neox_weights(model, res), res


def _source(source: str | Path | Run | Transformer, step: int | None) -> tuple[Transformer, Tokenizer | None, int | None, dict]:
    """(model in fp32 on the CPU, its tokenizer, its BOS id, where it came from) of a run, a run
    directory or a `Transformer`."""
    from icl_lab.data.text import bos_token, resolve_corpus
    from icl_lab.data.tokenizer import get_tokenizer

    if isinstance(source, Transformer):
        if step is not None:
            raise ConfigError("step= applies to run directories; drop it when exporting a Transformer")
        model = Transformer(source.cfg)  # a copy in fp32 on the CPU: the caller's model is left as it is
        model.load_state_dict({k: v.detach().float().cpu() for k, v in source.state_dict().items()})
        return model.eval(), source.tokenizer, source.bos_id, {"source": "a Transformer"}
    run = source if isinstance(source, Run) else load_run(source)
    model = run.model(step)
    data = run.config.data
    tok = run.tokenizer()
    if tok is None and data.kind == "text":  # an import without its own tokenizer: the one `analyze` uses
        corpus = Path() if data.tokenizer in ("gpt2", "byte") else resolve_corpus(data.corpus, build=False)  # those two read none
        tok = get_tokenizer(data.tokenizer, run.config.model.d_vocab, corpus, data.tokenizer_file)
    return model, tok, bos_token(data, tok), {"run": str(run.path.resolve()), "step": run.checkpoints[-1] if step is None else step}


@contextmanager
def _quiet():
    """transformers without its loading bar and info messages, restored afterwards (they are global)."""
    from transformers.utils import logging

    bar, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def _verify(folder: Path, model: Transformer, tok: Tokenizer | None) -> dict[str, float]:
    """The max |logit difference| between the folder loaded by transformers and `model`, on 4
    random sequences of up to 128 tokens, in fp64 (the mapping alone: what the export is held to)
    and in fp32 (with each implementation's rounding, which grows with depth and position).

    Raises:
        CheckpointError: transformers leaves a weight unloaded, or the tokenizer encodes differently.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet():
        hf, info = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, output_loading_info=True)
        why = same_ids(tok, AutoTokenizer.from_pretrained(folder, local_files_only=True), model.cfg.d_vocab)
    if bad := [k for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info.get(kind) or []]:
        raise CheckpointError(f"transformers did not load the exported weight {bad[0]}; report this as a bug with the model's config")
    if why:
        raise CheckpointError(f"{why}; report this as a bug with the run's tokenizer kind")
    tokens = torch.randint(0, model.cfg.d_vocab, (4, min(model.cfg.n_ctx, 128)), generator=torch.Generator().manual_seed(0))
    diffs = {}
    with torch.inference_mode():
        for name, dtype in (("fp32", torch.float32), ("fp64", torch.float64)):
            hf, model = hf.to(dtype), model.to(dtype)
            diffs[name] = (hf(tokens).logits - model.logits(tokens)).abs().max().item()
    return diffs


def _write(folder: Path, model: Transformer, tok: Tokenizer | None, bos: int | None, provenance: dict) -> dict:
    """Write the export into `folder`; the provenance recorded under "icl_lab" in its config.json."""
    from transformers import GenerationConfig

    eot = tok.eot if tok is not None else None
    with torch.no_grad():
        hf, weights, res = _hf_model(model, bos, eot)
    hf.architectures = [ARCHITECTURES[hf.model_type]]
    hf.dtype = "float32"
    write_safetensors(folder / "model.safetensors", {k: v.float().contiguous().clone() for k, v in weights.items()}, {"format": "pt"})
    hf_json = tokenizer_json(tok, model.cfg.d_vocab)
    write_text(folder / "tokenizer.json", hf_json)
    write_json(folder / "tokenizer_config.json", tokenizer_config(hf_json, bos, eot, model.cfg.n_ctx))
    write_json(folder / "generation_config.json", GenerationConfig.from_model_config(hf).to_diff_dict())
    record = {**provenance, "icl_lab_version": library_versions()["icl-lab"], "architecture": hf.model_type,
              "residual_copies": len(res.signs) if res else 1, "mirror": bool(res and res.mirror),
              "constant_channel": res.d_model if res and res.constant else None,
              "head_width": res.head_width if res else model.cfg.d_head, "d_head": model.cfg.d_head,
              "bos_id": bos, "exported": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    config = hf.to_diff_dict()
    if rope := config.get("rope_parameters"):  # also under transformers 4's names, which 4.x reads instead of rope_parameters
        config["rope_theta"] = rope["rope_theta"]
        if hf.model_type == "gpt_neox":
            config |= {"rotary_pct": rope["partial_rotary_factor"], "rotary_emb_base": rope["rope_theta"]}
    write_json(folder / "config.json", {**config, "icl_lab": record})
    return record


def export_hf(source: str | Path | Run | Transformer, out: str | Path, step: int | None = None) -> Path:
    """Write a Hugging Face `transformers` folder of a run's model (or of a `Transformer`), with
    its tokenizer, that `AutoModelForCausalLM.from_pretrained(out)` and
    `AutoTokenizer.from_pretrained(out)` load offline, and that `icl-lab import` reads back.

    The architecture and the exactness tricks are in the module docstring. The folder is written
    beside `out`, loaded with transformers and compared (logits on 4 random sequences, the tokenizer
    on a sample text), and renamed into place only when the logits agree to 1e-4 in fp64. config.json
    records, under "icl_lab", the source, step, architecture, layout and the max |logit difference|
    measured in fp64 (`max_abs_logit_diff`) and in fp32 (`max_abs_logit_diff_fp32`).

    Args:
        source: a run directory (or `Run`), or a `Transformer` (its `tokenizer` and `bos_id` go with it).
        out: the folder to create; it must not exist, or be empty.
        step: the run's checkpoint (default the latest).

    Returns:
        The folder.

    Raises:
        ConfigError: the model has no exact equivalent, `out` holds files, or transformers is missing.
        CheckpointError: no such run or step, or the written folder does not reproduce the model.

    Example:
        >>> path = export_hf("runs/synthetic-2l", "exports/synthetic-2l", step=1500)
        >>> json.loads((path / "config.json").read_text())["icl_lab"]["max_abs_logit_diff"]
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError("the Hugging Face export needs transformers; pip install transformers") from None
    model, tok, bos, provenance = _source(source, step)
    architecture(model.cfg)  # refuse before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"  # beside `out`: the final rename stays on one filesystem
    tmp.mkdir()
    try:
        record = _write(tmp, model, tok, bos, provenance)
        diffs = _verify(tmp, model, tok)
        if not diffs["fp64"] <= TOLERANCE:  # also NaN
            raise CheckpointError(f"the exported {record['architecture']} model's logits differ from this model's by {diffs['fp64']:.3g} "
                                  f"in fp64 (> {TOLERANCE:g}), so nothing was written; report this as a bug with the model's config")
        config = json.loads((tmp / "config.json").read_text())
        record |= {"max_abs_logit_diff": diffs["fp64"], "max_abs_logit_diff_fp32": diffs["fp32"]}
        write_json(tmp / "config.json", {**config, "icl_lab": record})
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
