"""Sampling: the compiled, graphed Sampler, and sharded generation of many images."""

from .sampler import Sampler

__all__ = ["Sampler"]
