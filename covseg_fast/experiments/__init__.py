"""Studies built on training and evaluation: repeated k-fold cross-validation and its results table."""
from .crossval import Arm, CrossValidation
from .results_table import aggregate, format_markdown, seed_scores

__all__ = ["Arm", "CrossValidation", "aggregate", "format_markdown", "seed_scores"]
