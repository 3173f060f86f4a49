"""Forward noising x_t = ᾱ_t x_0 + β̄_t ε (DESIGN §1), ε drawn in-kernel or passed in.

Traffic per element: reads x_0, writes x_t (2N) with in-kernel noise; reads x_0 and ε,
writes x_t (3N) with explicit noise. The eager reference `randn_like` + `add_noise`
moves 5N (write ε; read x_0, ε; write x_t) and keeps ε alive for the loss.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _checks, tables
from ._cast import to_storage
from ._philox import STREAM_NOISING, noise_torch
from ._tile import noise4, table_row, tile
from .noise import launch_config


@triton.jit
def _q_lane(x0_ptr, n_ptr, o_ptr, c, p, HW, C, s0c, s0p, snc, snp, soc, sop, a, s, n, HAS_NOISE: tl.constexpr):
    # one channel c of a pixel block: x_t = a x_0 + s ε
    m = p < tl.where(c < C, HW, 0)  # pixel in the image and channel c exists
    x0 = tl.load(x0_ptr + c * s0c + p * s0p, mask=m).to(tl.float32)
    if HAS_NOISE:
        n = tl.load(n_ptr + c * snc + p * snp, mask=m).to(tl.float32)
    tl.store(o_ptr + c * soc + p * sop, to_storage(a * x0 + s * n, o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _q_sample_kernel(
    x0_ptr,  # (B, C, H, W) clean images
    n_ptr,  # (B, C, H, W) explicit noise, read only if HAS_NOISE
    o_ptr,  # (B, C, H, W) x_t, written
    t_ptr,  # (B,) timestep per sample
    seed_ptr,  # (B,) int64 key per sample, read only if not HAS_NOISE
    tab_ptr,  # (T, NC) float32 coefficient table
    T, C, HW, G, TILES, stream,
    s0b, s0c, s0p, snb, snc, snp, sob, soc, sop,  # element strides: batch, channel, pixel
    NC: tl.constexpr, HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(G, TILES, BLOCK)
    t = tl.load(t_ptr + b)
    row, bad = table_row(tab_ptr, t, T, NC)
    a = tl.load(row + 0) + bad  # ᾱ_t   (tables.SQRT_AB)
    s = tl.load(row + 1) + bad  # β̄_t   (tables.SQRT_1M_AB)
    n0, n1, n2, n3 = noise4(seed_ptr, b, p, g, t, stream, HAS_NOISE, BLOCK)
    bl = b.to(tl.int64)
    x0_ptr += bl * s0b
    n_ptr += bl * snb
    o_ptr += bl * sob
    c = 4 * g
    _q_lane(x0_ptr, n_ptr, o_ptr, c, p, HW, C, s0c, s0p, snc, snp, soc, sop, a, s, n0, HAS_NOISE)
    _q_lane(x0_ptr, n_ptr, o_ptr, c + 1, p, HW, C, s0c, s0p, snc, snp, soc, sop, a, s, n1, HAS_NOISE)
    _q_lane(x0_ptr, n_ptr, o_ptr, c + 2, p, HW, C, s0c, s0p, snc, snp, soc, sop, a, s, n2, HAS_NOISE)
    _q_lane(x0_ptr, n_ptr, o_ptr, c + 3, p, HW, C, s0c, s0p, snc, snp, soc, sop, a, s, n3, HAS_NOISE)


def _q_sample_launch(x0, t, table, seeds, noise, stream, out):
    B, C, H, W = x0.shape
    HW, G = H * W, (C + 3) // 4
    block, warps, tiles = launch_config(HW)
    has_noise = noise is not None
    n = noise if has_noise else x0
    _q_sample_kernel[(B * G * tiles,)](
        x0, n, out, t, t if has_noise else seeds, table,
        table.shape[0], C, HW, G, tiles, stream,
        *_checks.pixel_strides(x0), *_checks.pixel_strides(n), *_checks.pixel_strides(out),
        NC=tables.NCOEF, HAS_NOISE=has_noise, BLOCK=block, num_warps=warps,
    )


def _q_sample_torch(x0, t, table, seeds, noise, stream, out):
    f = _checks.compute_dtype(x0)
    noise = noise_torch(noise, seeds, t, stream, x0, f)
    coef = table[t].to(f)  # (B, NCOEF); t was range-checked on the host
    a = coef[:, tables.SQRT_AB].view(-1, 1, 1, 1)
    s = coef[:, tables.SQRT_1M_AB].view(-1, 1, 1, 1)
    out.copy_(a * x0.to(f) + s * noise)


@torch.library.custom_op("fastddpm::q_sample", mutates_args=())
def _q_sample_op(
    x0: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
    seeds: Optional[torch.Tensor], noise: Optional[torch.Tensor], stream: int,
) -> torch.Tensor:
    out = torch.empty_like(x0)
    impl = _q_sample_launch if _checks.use_triton(x0) else _q_sample_torch
    impl(x0, t, table, seeds, noise, stream, out)
    return out


@_q_sample_op.register_fake
def _(x0, t, table, seeds, noise, stream):
    return torch.empty_like(x0)


def _q_setup(ctx, inputs, output):
    x0, t, table, seeds, noise, stream = inputs
    ctx.save_for_backward(t, table)
    ctx.has_noise = noise is not None


def _q_backward(ctx, grad):
    # x_t is linear in x_0 and ε: dx_t/dx_0 = ᾱ_t, dx_t/dε = β̄_t, per sample.
    t, table = ctx.saved_tensors
    coef = table[t].to(grad.dtype)
    g_x0 = grad * coef[:, tables.SQRT_AB].view(-1, 1, 1, 1)
    g_n = grad * coef[:, tables.SQRT_1M_AB].view(-1, 1, 1, 1) if ctx.has_noise else None
    return g_x0, None, None, None, g_n, None


_q_sample_op.register_autograd(_q_backward, setup_context=_q_setup)


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    table: torch.Tensor,
    *,
    seeds=None,
    noise: Optional[torch.Tensor] = None,
    stream: int = STREAM_NOISING,
) -> torch.Tensor:
    """x_t = ᾱ_t x_0 + β̄_t ε for a batch (B, C, H, W) with one timestep per sample.

    x0:    clean images, fp32/bf16/fp16 (CPU also fp64), contiguous or channels-last;
           x_t comes back in x0's dtype and layout.
    t:     (B,) int32/int64 timesteps in [0, T).
    table: coef_table(alphas_cumprod) on x0's device.
    seeds: int or (B,) int64 tensor: ε drawn in-kernel at address (seed, stream, t, c, h, w)
           and never stored; eps_mse_loss(..., seeds=) regenerates the same ε.
    noise: explicit ε instead of seeds: a drop-in for diffusers' add_noise.
    """
    _checks.check_image(x0, "x0")
    T = _checks.check_table(table, x0, tables.NCOEF)
    _checks.check_timesteps(t, x0.shape[0], T, x0.device)
    seeds = _checks.check_noise_source(seeds, noise, x0, "x0")
    return torch.ops.fastddpm.q_sample(x0, t, table, seeds, noise, _checks.check_stream(stream))
