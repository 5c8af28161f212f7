"""The intervene stage: ablations, activation, attribution and path patching, the logit lens and direct logit
attribution, on a model: pure functions that touch no files (`icl_lab.pipeline` applies them at
every checkpoint of a run and stores the rows). After `measure` in the flow data -> model -> train
-> run -> measure -> intervene -> pipeline."""

from icl_lab.intervene.ablate import KINDS, ablate_head_group, ablate_heads, ablate_heads_serially, all_heads
from icl_lab.intervene.attribution import ablation_rows, removed_fraction
from icl_lab.intervene.attribution_patching import attribution_patch_heads, attribution_patch_residual, rank_correlation
from icl_lab.intervene.lens import direct_logit_attribution, logit_lens
from icl_lab.intervene.patching import attention_pattern_json, patch_heads, patch_residual, path_patch

__all__ = [
    "KINDS", "ablate_head_group", "ablate_heads", "ablate_heads_serially", "ablation_rows", "all_heads", "direct_logit_attribution",
    "attention_pattern_json", "attribution_patch_heads", "attribution_patch_residual", "logit_lens", "patch_heads", "patch_residual",
    "path_patch", "rank_correlation", "removed_fraction",
]
