"""Training: the Trainer (fused or reference loss, exact resume, DDP)."""

from .trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
