"""The measure stage: pure functions of a model and tokens — loss by position and the ICL score,
attention-pattern head scores, copying scores, weight-based OV-circuit scores, the induction-head
rule and bootstrap intervals. Nothing here touches a file (the import contract holds it to that);
`icl_lab.pipeline` applies these at every checkpoint and stores the results. After `run` in the
flow data -> model -> train -> run -> measure."""

from icl_lab.measure.circuits import ov_eigen_positivity
from icl_lab.measure.copying import copying_direct_scores, copying_olsson_scores, copying_scores
from icl_lab.measure.induction import INDUCTION_THRESHOLDS, induction_heads, is_induction_head
from icl_lab.measure.factored import Factored, full_ov_circuit, full_qk_circuit, ov_circuit, qk_circuit
from icl_lab.measure.composition import composition_baseline, composition_scores, k_composition_eigen_trace, qk_ov
from icl_lab.measure.llc import LLCEstimate, SGLDSettings, llc  # `llc` is the function; the module stays importable
from icl_lab.measure.llc_calibration import calibrate
from icl_lab.measure.llc_stages import compare_stages, llc_stages
from icl_lab.measure.losses import dloss_dlnpos, icl_positions, icl_score, loss_by_token, per_token_losses
from icl_lab.measure.head_scores import (
    attention_patterns,
    duplicate_token_scores,
    prefix_matching_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from icl_lab.measure.text_signals import TextProbe, make_text_probe, passage_losses, repeated_passages, text_signals

__all__ = [
    "Factored", "full_ov_circuit", "full_qk_circuit", "ov_circuit", "qk_circuit",
    "composition_baseline", "composition_scores", "k_composition_eigen_trace", "qk_ov",
    "attention_patterns", "copying_scores", "copying_direct_scores", "copying_olsson_scores",
    "INDUCTION_THRESHOLDS", "induction_heads", "is_induction_head", "dloss_dlnpos", "duplicate_token_scores", "icl_positions",
    "icl_score", "loss_by_token", "ov_eigen_positivity", "per_token_losses",
    "prefix_matching_scores", "previous_token_scores", "repeated_random_tokens",
    "LLCEstimate", "SGLDSettings", "calibrate", "compare_stages", "llc", "llc_stages",
    "TextProbe", "make_text_probe", "passage_losses", "repeated_passages", "text_signals",
]
