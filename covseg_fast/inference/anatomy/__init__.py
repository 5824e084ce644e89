"""Model-free anatomy of a CT case for `covseg screen`: body, lungs (right/left), the margin where infection
counts, and plausibility checks. Modules: body, airway, lungs, margin, checks, components; case ties them."""
from .case import LEFT_LUNG, LEFT_MARGIN, OUTSIDE, RIGHT_LUNG, RIGHT_MARGIN, Anatomy, compute_anatomy
from .margin import MARGIN_MM

__all__ = ["Anatomy", "compute_anatomy", "MARGIN_MM", "OUTSIDE", "RIGHT_LUNG", "LEFT_LUNG", "RIGHT_MARGIN",
           "LEFT_MARGIN"]
