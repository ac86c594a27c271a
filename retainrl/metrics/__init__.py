"""Evaluation metrics: unbiased pass@k and multi-skill retention (forgetting, BWT, FWT, ...).

Definitions: docs/METRICS.md.
"""

from retainrl.metrics.passk import mean_pass_at_k, pass_at_k, pass_at_k_from_results
from retainrl.metrics.retention import (
    aggregate_seeds,
    avg,
    bwt,
    curves_from_matrix,
    format_aggregate,
    forgetting,
    fwt,
    max_drop,
    oscillation,
    scalar_metrics,
    summarize,
    target_gain,
    trained_phase,
    worst,
)

__all__ = [
    "aggregate_seeds", "avg", "bwt", "curves_from_matrix", "format_aggregate", "forgetting", "fwt",
    "max_drop", "mean_pass_at_k", "oscillation", "pass_at_k", "pass_at_k_from_results",
    "scalar_metrics", "summarize", "target_gain", "trained_phase", "worst",
]
