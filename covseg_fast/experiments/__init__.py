"""Studies built on training and evaluation: repeated k-fold cross-validation and its results table."""
from .crossval import Arm, CrossValidation
from .results_table import aggregate, format_markdown, seed_scores
from .sources import SliceFolderSource, VolumeFolderSource

__all__ = ["Arm", "CrossValidation", "SliceFolderSource", "VolumeFolderSource", "aggregate", "format_markdown",
           "seed_scores"]
