"""fastddpm: a DDPM engine with fused Triton kernels and addressed noise.

The package by layer, each importing only from the layers before it (tests/test_structure.py):

    kernels/    Triton kernels + launchers (fastddpm.kernels); imports nothing of fastddpm
    io/         images, checkpoints, data sets, sample-set files
    core/       schedules, sampler plans, the reference path and the fused path
    models/     the U-Net; loading a model to sample from
    metrics/    feature networks and the quality metrics
    sampling/   the Sampler; sharded generation
    training/   the Trainer
    train, generate, eval, pretrained    the command lines (python -m fastddpm.NAME)
    bench/      python -m fastddpm.bench: speed, static cost, quality tables

The command-line modules are attributes of the package too, imported on first use (so that
`python -m fastddpm.generate` does not find its own module imported before it runs).
"""

import importlib

from . import kernels, metrics
from .core import Method, Plan, Schedule, fused, reference
from .io.images import save_grid, to_uint8
from .models import UNet, UNetConfig
from .sampling import Sampler
from .training import TrainConfig, Trainer

COMMANDS = ("bench", "eval", "generate", "pretrained", "train", "tune")

__all__ = [
    "Method", "Plan", "Sampler", "Schedule", "TrainConfig", "Trainer", "UNet", "UNetConfig",
    "fused", "kernels", "metrics", "reference", "save_grid", "to_uint8", *COMMANDS,
]
__version__ = "0.1.0"


def __getattr__(name):
    if name in COMMANDS:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
