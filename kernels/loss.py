"""ε-prediction loss, forward and backward, regenerating ε from its address.

    loss_b = w_{t_b} · mean_{c,h,w} (ε̂ - ε)²        per sample (docs/notation.md)
    ∂loss_b/∂ε̂ = 2 w_{t_b} (ε̂ - ε) / (C H W)

ε is never stored: both passes redraw it from (seed, STREAM_NOISING, t, c, h, w), the
address q_sample used. Forward reads N and writes one fp32 partial sum per program
(summed in a fixed order, so the loss is bitwise reproducible, no atomics); backward
reads N and writes N. The eager reference keeps ε alive from the noising step and
reads it twice more.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _checks
from ._cast import to_storage
from ._tile import at, channels_last, lane_mask, launch, noise4, row_index, tile
from .philox import STREAM_NOISING, noise_torch


@triton.jit
def _sq_lane(e_ptr, n_ptr, b, c, p, HW, n,
             C: tl.constexpr, G: tl.constexpr, CL_E: tl.constexpr, CL_N: tl.constexpr, HAS_NOISE: tl.constexpr):
    m = lane_mask(p, HW, c, C, G)  # pixel in the image and channel c exists
    e = tl.load(at(e_ptr, b, c, p, HW, C, CL_E), mask=m).to(tl.float32)
    if HAS_NOISE:
        n = tl.load(at(n_ptr, b, c, p, HW, C, CL_N), mask=m).to(tl.float32)
    d = tl.where(m, e - n, 0.0)
    return d * d


@triton.jit
def _grad_lane(e_ptr, n_ptr, g_ptr, b, c, p, HW, k, n,
               C: tl.constexpr, G: tl.constexpr, CL_E: tl.constexpr, CL_N: tl.constexpr, CL_G: tl.constexpr,
               HAS_NOISE: tl.constexpr):
    m = lane_mask(p, HW, c, C, G)
    e = tl.load(at(e_ptr, b, c, p, HW, C, CL_E), mask=m).to(tl.float32)
    if HAS_NOISE:
        n = tl.load(at(n_ptr, b, c, p, HW, C, CL_N), mask=m).to(tl.float32)
    tl.store(at(g_ptr, b, c, p, HW, C, CL_G), to_storage(k * (e - n), g_ptr.dtype.element_ty), mask=m)


@triton.jit
def _loss_kernel(
    e_ptr,  # (B, C, H, W) ε̂
    n_ptr,  # (B, C, H, W) explicit ε, read only if HAS_NOISE
    g_ptr,  # BACKWARD: (B, C, H, W) ∂L/∂ε̂ written; forward: unused
    part_ptr,  # forward: (B * G * TILES,) fp32 partial sums; BACKWARD: (B,) fp32 ∂L/∂loss_b
    t_ptr,  # (B,) timestep per sample
    seed_ptr,  # (B,) int64 key per sample, read only if not HAS_NOISE
    w_ptr,  # (T,) fp32 per-timestep weights, read only if HAS_W
    T, HW, stream, inv_n,  # inv_n = 1 / (C H W)
    C: tl.constexpr, G: tl.constexpr, TILES: tl.constexpr, CL_E: tl.constexpr, CL_N: tl.constexpr, CL_G: tl.constexpr,
    HAS_NOISE: tl.constexpr, HAS_W: tl.constexpr, BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(TILES, G, BLOCK)
    t = tl.load(t_ptr + b)
    if HAS_W:
        k, bad = row_index(t, T)
        w = tl.load(w_ptr + k) + bad  # the weight of this sample's timestep
    else:
        w = 1.0
    n0, n1, n2, n3 = noise4(seed_ptr, b, p, g, t, stream, not HAS_NOISE, BLOCK)
    c = 4 * g
    if BACKWARD:
        k = 2.0 * w * inv_n * tl.load(part_ptr + b)
        _grad_lane(e_ptr, n_ptr, g_ptr, b, c, p, HW, k, n0, C, G, CL_E, CL_N, CL_G, HAS_NOISE)
        if C > 1:
            _grad_lane(e_ptr, n_ptr, g_ptr, b, c + 1, p, HW, k, n1, C, G, CL_E, CL_N, CL_G, HAS_NOISE)
        if C > 2:
            _grad_lane(e_ptr, n_ptr, g_ptr, b, c + 2, p, HW, k, n2, C, G, CL_E, CL_N, CL_G, HAS_NOISE)
        if C > 3:
            _grad_lane(e_ptr, n_ptr, g_ptr, b, c + 3, p, HW, k, n3, C, G, CL_E, CL_N, CL_G, HAS_NOISE)
    else:
        acc = _sq_lane(e_ptr, n_ptr, b, c, p, HW, n0, C, G, CL_E, CL_N, HAS_NOISE)
        if C > 1:
            acc += _sq_lane(e_ptr, n_ptr, b, c + 1, p, HW, n1, C, G, CL_E, CL_N, HAS_NOISE)
        if C > 2:
            acc += _sq_lane(e_ptr, n_ptr, b, c + 2, p, HW, n2, C, G, CL_E, CL_N, HAS_NOISE)
        if C > 3:
            acc += _sq_lane(e_ptr, n_ptr, b, c + 3, p, HW, n3, C, G, CL_E, CL_N, HAS_NOISE)
        tl.store(part_ptr + pid, tl.sum(acc, axis=0) * w * inv_n)


def _loss_launch(eps_hat, t, seeds, noise, weights, stream, grad_in=None, grad_out=None):
    """Forward when grad_in is None: returns per-sample losses (B,) fp32.
    Backward otherwise: writes ∂L/∂ε̂ into grad_out given grad_in = ∂L/∂loss_b (B,)."""
    L = launch(eps_hat)
    has_noise, has_w = noise is not None, weights is not None
    backward = grad_in is not None
    n = noise if has_noise else eps_hat
    part = grad_in if backward else torch.empty(L.grid[0], device=eps_hat.device, dtype=torch.float32)
    g = grad_out if backward else eps_hat
    _loss_kernel[L.grid](
        eps_hat, n, g, part, t, t if has_noise else seeds, weights if has_w else part,
        weights.shape[0] if has_w else 0, L.HW, stream, 1.0 / (L.C * L.HW),
        CL_E=channels_last(eps_hat), CL_N=channels_last(n), CL_G=channels_last(g),
        HAS_NOISE=has_noise, HAS_W=has_w, BACKWARD=backward, **L.meta(),
    )
    return None if backward else part.view(L.B, L.G * L.tiles).sum(dim=1)


def _loss_torch(eps_hat, t, seeds, noise, weights, stream):
    f = _checks.compute_dtype(eps_hat)
    d = eps_hat.to(f) - noise_torch(noise, seeds, t, stream, eps_hat, f)
    loss = (d * d).mean(dim=(1, 2, 3))
    return loss * weights[t].to(f) if weights is not None else loss


def _loss_backward_torch(grad_in, eps_hat, t, seeds, noise, weights, stream, grad_out):
    f = _checks.compute_dtype(eps_hat)
    B, C, H, W = eps_hat.shape
    k = grad_in.to(f) * (2.0 / (C * H * W))
    if weights is not None:
        k = k * weights[t].to(f)
    grad_out.copy_(k.view(-1, 1, 1, 1) * (eps_hat.to(f) - noise_torch(noise, seeds, t, stream, eps_hat, f)))


@torch.library.custom_op("fastddpm::eps_mse_loss", mutates_args=())
def _loss_op(
    eps_hat: torch.Tensor, t: torch.Tensor, seeds: Optional[torch.Tensor], noise: Optional[torch.Tensor],
    weights: Optional[torch.Tensor], stream: int,
) -> torch.Tensor:
    if _checks.use_triton(eps_hat):
        return _loss_launch(eps_hat, t, seeds, noise, weights, stream)
    return _loss_torch(eps_hat, t, seeds, noise, weights, stream)


@_loss_op.register_fake
def _(eps_hat, t, seeds, noise, weights, stream):
    return eps_hat.new_empty(eps_hat.shape[0], dtype=_checks.compute_dtype(eps_hat))


@torch.library.custom_op("fastddpm::eps_mse_loss_backward", mutates_args=())
def _loss_backward_op(
    grad_in: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, seeds: Optional[torch.Tensor],
    noise: Optional[torch.Tensor], weights: Optional[torch.Tensor], stream: int,
) -> torch.Tensor:
    grad_out = torch.empty_like(eps_hat)
    if _checks.use_triton(eps_hat):
        grad_in = grad_in.to(torch.float32).contiguous()  # (B,): tiny
        _loss_launch(eps_hat, t, seeds, noise, weights, stream, grad_in, grad_out)
    else:
        _loss_backward_torch(grad_in, eps_hat, t, seeds, noise, weights, stream, grad_out)
    return grad_out


@_loss_backward_op.register_fake
def _(grad_in, eps_hat, t, seeds, noise, weights, stream):
    return torch.empty_like(eps_hat)


def _loss_setup(ctx, inputs, output):
    eps_hat, t, seeds, noise, weights, stream = inputs
    ctx.save_for_backward(eps_hat, t, seeds, noise, weights)
    ctx.stream = stream


def _loss_backward(ctx, grad):
    eps_hat, t, seeds, noise, weights = ctx.saved_tensors
    g = torch.ops.fastddpm.eps_mse_loss_backward(grad, eps_hat, t, seeds, noise, weights, ctx.stream)
    g_noise = -g if (noise is not None and ctx.needs_input_grad[3]) else None
    return g, None, None, g_noise, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)


def eps_mse_loss(
    eps_hat: torch.Tensor,
    t: torch.Tensor,
    *,
    seeds=None,
    noise: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    stream: int = STREAM_NOISING,
) -> torch.Tensor:
    """‖ε - ε̂‖² averaged over (C, H, W), times w_t, then reduced over the batch.

    eps_hat:   (B, C, H, W) the model's prediction; gradients flow to it (loss.backward()).
    t:         (B,) int timesteps, the ones q_sample used.
    seeds:     the seeds q_sample used: ε is regenerated in-kernel, never stored.
    noise:     explicit ε instead (then this is F.mse_loss(eps_hat, noise) per sample).
    weights:   optional (T,) float32 per-timestep weights w_t on eps_hat's device.
    reduction: "mean" (a scalar, = F.mse_loss when unweighted), "sum", or "none" (B,).
    The loss is float32 whatever eps_hat's dtype (float64 for float64 input on the CPU).
    """
    _checks.check_image(eps_hat, "eps_hat")
    B = eps_hat.shape[0]
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"weights: expected a float32 tensor (T,), got {type(weights).__name__}")
        if weights.dim() != 1 or weights.dtype != torch.float32 or not weights.is_contiguous():
            raise ValueError(
                f"weights: expected a contiguous 1-D float32 tensor (T,) of per-timestep weights, "
                f"got {weights.dtype} of shape {tuple(weights.shape)}"
            )
        if weights.device != eps_hat.device:
            raise ValueError(f"weights: expected device {eps_hat.device}, got {weights.device}")
        T = weights.shape[0]
    else:
        T = 2**32  # without weights t is only part of ε's address
    _checks.check_timesteps(t, B, T, eps_hat.device)
    seeds = _checks.check_noise_source(seeds, noise, eps_hat, "eps_hat")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    per_sample = torch.ops.fastddpm.eps_mse_loss(eps_hat, t, seeds, noise, weights, _checks.check_stream(stream))
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample
