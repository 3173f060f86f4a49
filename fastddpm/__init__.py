"""fastddpm: a DDPM engine with fused Triton kernels and addressed noise."""

from . import kernels, reference
from .schedule import Schedule

__all__ = ["Schedule", "kernels", "reference"]
__version__ = "0.1.0"
