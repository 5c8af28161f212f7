"""The model stage: a decoder-only transformer with TransformerLens hook names and weights.

Sits after `data` in the flow data -> model -> train -> run -> measure."""

from icl_lab.model.attention import KVCache
from icl_lab.model.config import ModelConfig
from icl_lab.model.cache import ActivationCache, hook_name
from icl_lab.model.hooks import HookPoint
from icl_lab.model.transformer import Transformer

__all__ = ["ActivationCache", "HookPoint", "KVCache", "ModelConfig", "Transformer", "hook_name"]
