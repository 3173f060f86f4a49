"""fastddpm: a DDPM engine with fused Triton kernels and addressed noise."""

from . import kernels, reference
from .images import save_grid, to_uint8
from .sampler import Sampler
from .schedule import Schedule
from .unet import UNet, UNetConfig

__all__ = ["Sampler", "Schedule", "UNet", "UNetConfig", "kernels", "reference", "save_grid", "to_uint8"]
__version__ = "0.1.0"
