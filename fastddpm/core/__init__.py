"""The diffusion mathematics: schedules, sampler plans, and the two paths that share one
signature, the eager reference (the oracle) and the fused kernels."""

from . import fused, reference
from .plan import Method, Plan
from .schedule import Schedule

__all__ = ["Method", "Plan", "Schedule", "fused", "reference"]
