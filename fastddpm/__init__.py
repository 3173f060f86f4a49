"""fastddpm: a DDPM engine with fused Triton kernels and addressed noise."""

from . import fused, kernels, reference
from .images import save_grid, to_uint8
from .plan import Method, Plan
from .sampler import Sampler
from .schedule import Schedule
from .trainer import TrainConfig, Trainer
from .unet import UNet, UNetConfig

__all__ = [
    "Method", "Plan", "Sampler", "Schedule", "TrainConfig", "Trainer", "UNet", "UNetConfig",
    "fused", "generate", "kernels", "reference", "save_grid", "to_uint8",
]
__version__ = "0.1.0"


def __getattr__(name):  # fastddpm.generate: imported on first use (see fastddpm/generate.py)
    if name == "generate":
        import importlib

        return importlib.import_module(".generate", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
