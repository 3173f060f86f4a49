"""Plumbing shared by the fast and the reference paths: what a model returns, the image shape
it works on, and the per-image seeds an image's address starts from."""

import numpy as np
import torch


def model_output(out) -> torch.Tensor:
    """A model's ε̂: the tensor itself, or diffusers' output object's `.sample`."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model: expected it to return a tensor or an object with .sample, got {type(out).__name__}")


def checked_output(out, like) -> torch.Tensor:
    """ε̂ for x_t `like` (a tensor, or the shape expected), or a clear error when the model
    answers something else."""
    eps = model_output(out)
    shape = tuple(like.shape) if isinstance(like, torch.Tensor) else tuple(like)
    if tuple(eps.shape) != shape:
        raise ValueError(f"model: returned shape {tuple(eps.shape)}, expected {shape} (ε̂ for x_t)")
    if not eps.is_floating_point():
        raise TypeError(f"model: returned dtype {eps.dtype}, expected a floating-point ε̂")
    return eps


def config_get(model, key):
    """model.config[key] for a dict config (diffusers) or an attribute (fastddpm), else None."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def image_shape(model, shape) -> tuple:
    """(C, H, W) from shape= or from the model's config (sample_size, in_channels)."""
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape: expected (C, H, W) of positive ints, got {shape}")
        return shape
    size, chans = config_get(model, "sample_size"), config_get(model, "in_channels")
    if size is None or chans is None:
        raise ValueError("shape: the model has no config with sample_size and in_channels; pass shape=(C, H, W)")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(chans), int(h), int(w))


def num_classes(model):
    """N of a class-conditional model (its null label is N), else None: fastddpm's
    config.num_classes, or diffusers' num_class_embeds - 1."""
    n = config_get(model, "num_classes")
    if n is None and config_get(model, "num_class_embeds") is not None:
        n = config_get(model, "num_class_embeds") - 1
    return n


def seed_tensor(seeds) -> torch.Tensor:
    """Per-image seeds as a non-empty 1-D int64 tensor (on the device it came on), from a tensor
    or a sequence of ints in [-2**63, 2**63); a string, floats or bools are refused."""
    if isinstance(seeds, (str, bytes)):
        raise TypeError(f"seeds: expected a tensor or a sequence of ints, got the string {seeds!r} (for a range, "
                        f"pass range(a, b) or seed= with batch=)")
    if not isinstance(seeds, torch.Tensor):
        try:
            values = [int(s) if isinstance(s, (int, np.integer)) and not isinstance(s, bool) else None for s in seeds]
        except TypeError:
            values = [None]
        if not values or None in values or not all(-(2**63) <= v < 2**63 for v in values):
            raise ValueError(f"seeds: expected a non-empty sequence of ints in [-2**63, 2**63), got {seeds!r}"[:200])
        seeds = torch.tensor(values, dtype=torch.int64)
    if seeds.dtype != torch.int64 or seeds.dim() != 1 or seeds.numel() < 1:
        raise ValueError(f"seeds: expected a non-empty 1-D int64 tensor of per-image seeds, got {seeds.dtype} {tuple(seeds.shape)}")
    return seeds


def label_tensor(labels, B: int, n: int) -> torch.Tensor:
    """A class-conditional model's labels for B images as a (B,) int64 tensor: one int for all,
    a sequence or a tensor of ints in [0, n) (n, the null label, is the sampler's to use)."""
    if isinstance(labels, bool) or isinstance(labels, (str, bytes, float)):
        raise TypeError(f"labels: expected ints, got {labels!r}")
    if isinstance(labels, (int, np.integer)):
        labels = torch.full((B,), int(labels), dtype=torch.int64)
    elif not isinstance(labels, torch.Tensor):
        values = list(labels)
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
            raise TypeError(f"labels: expected ints, got {values[:8]!r}")
        labels = torch.tensor(values, dtype=torch.int64)
    if labels.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"labels: expected an integer tensor, got {labels.dtype}")
    if labels.shape != (B,):
        raise ValueError(f"labels: expected one label an image ({B},), got shape {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= n:
        raise ValueError(f"labels: expected classes in [0, {n}), got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.to(torch.int64)
