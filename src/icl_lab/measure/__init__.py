"""The measure stage: scores computed from a model or a run's checkpoints — loss by position and
the ICL score, attention-pattern head scores, and weight-based OV-circuit scores. After `run` in the flow data -> model -> train -> run -> measure."""

from icl_lab.measure.circuits import copying_scores, ov_eigen_positivity
from icl_lab.measure.factored import Factored, full_ov_circuit, full_qk_circuit, ov_circuit, qk_circuit
from icl_lab.measure.composition import composition_baseline, composition_scores, k_composition_eigen_trace, qk_ov
from icl_lab.measure.losses import dloss_dlnpos, icl_positions, icl_score, loss_by_token, per_token_losses
from icl_lab.measure.head_scores import (
    attention_patterns,
    duplicate_token_scores,
    prefix_matching_scores,
    previous_token_scores,
    repeated_random_tokens,
)

from icl_lab.measure.analyze import analyze, is_analysed

__all__ = [
    "Factored", "full_ov_circuit", "full_qk_circuit", "ov_circuit", "qk_circuit",
    "analyze", "is_analysed", "composition_baseline", "composition_scores", "k_composition_eigen_trace", "qk_ov",
    "attention_patterns", "copying_scores", "dloss_dlnpos", "duplicate_token_scores", "icl_positions",
    "icl_score", "loss_by_token", "ov_eigen_positivity", "per_token_losses",
    "prefix_matching_scores", "previous_token_scores", "repeated_random_tokens",
]
