"""Evaluation of NeurOp-Diff and its baselines under the paper's protocol (see [`~.run`] for the protocol).

Example:
    >>> from neurop_diff_diffusers.evaluation import METHODS, spread_positions
    >>> "neurop_diff" in METHODS, spread_positions(10, 3)
    (True, [0, 4, 9])
"""

from .methods import METHOD_LABELS, METHODS, image_seed
from .no_reference import evaluate_no_reference, evaluate_no_reference_with_settings
from .report import results_to_markdown, save_results
from .run import as_sr3_pipeline, evaluate, evaluate_with_settings, trust_summary
from .settings import (
    DEFAULT_SCALES,
    MAX_IN_DISTRIBUTION_SCALE,
    EvaluationSettings,
    check_settings,
    resolve_methods,
    spread_positions,
)

__all__ = [
    "DEFAULT_SCALES",
    "MAX_IN_DISTRIBUTION_SCALE",
    "METHODS",
    "METHOD_LABELS",
    "EvaluationSettings",
    "as_sr3_pipeline",
    "check_settings",
    "evaluate",
    "evaluate_no_reference",
    "evaluate_no_reference_with_settings",
    "evaluate_with_settings",
    "image_seed",
    "resolve_methods",
    "results_to_markdown",
    "save_results",
    "spread_positions",
    "trust_summary",
]
