"""Where TransformerLens users look for helpers: `icl_lab.utils.get_act_name` names hook points
as `transformer_lens.utils.get_act_name` does."""

from icl_lab.model.names import get_act_name

__all__ = ["get_act_name"]
