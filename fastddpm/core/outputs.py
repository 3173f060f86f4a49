"""Model-side plumbing shared by the fast and the reference paths: what a model returns,
and the image shape it works on."""

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
