"""Reverse update x_{t-1} = (x_t - (β_t²/β̄_t) ε̂)/α_t + σ_t z (DESIGN §1), fused.

One pass reads x_t and ε̂ and writes x_{t-1}, optionally in place and optionally also a
second copy in another dtype and layout (the bf16 channels-last input of the next
U-Net call). z is drawn in-kernel (stream STREAM_REVERSE) or passed in; σ_0 = 0 comes
from the table, so the last step needs no host branch.

Traffic per element: reads 2N, writes N (+N for the second copy). The eager reference
draws z (write N), then reads x_t, ε̂, z and writes x_{t-1} through several temporaries.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _checks, tables
from ._cast import to_storage
from ._philox import STREAM_REVERSE, noise_torch
from ._tile import noise4, table_row, tile
from .noise import launch_config


@triton.jit
def _step_lane(
    x_ptr, e_ptr, z_ptr, o_ptr, l_ptr, c, p, HW, C,
    sxc, sxp, sec, sep, szc, szp, soc, sop, slc, slp,
    r_alpha, eps_c, sigma, r_sab, x0_e, post_x0, post_xt, z,
    CLIP: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_LOWP: tl.constexpr,
):
    m = p < tl.where(c < C, HW, 0)  # pixel in the image and channel c exists
    x = tl.load(x_ptr + c * sxc + p * sxp, mask=m).to(tl.float32)
    e = tl.load(e_ptr + c * sec + p * sep, mask=m).to(tl.float32)
    if HAS_NOISE:
        z = tl.load(z_ptr + c * szc + p * szp, mask=m).to(tl.float32)
    if CLIP:
        x0 = tl.minimum(tl.maximum(x * r_sab - x0_e * e, -1.0), 1.0)  # Ho et al. eq. 15, clipped
        mu = post_x0 * x0 + post_xt * x  # posterior mean, Ho et al. eq. 7
    else:
        mu = x * r_alpha - eps_c * e  # Ho et al. eq. 11
    y = mu + sigma * z
    tl.store(o_ptr + c * soc + p * sop, to_storage(y, o_ptr.dtype.element_ty), mask=m)
    if HAS_LOWP:
        tl.store(l_ptr + c * slc + p * slp, to_storage(y, l_ptr.dtype.element_ty), mask=m)


@triton.jit
def _step_kernel(
    x_ptr,  # (B, C, H, W) x_t
    e_ptr,  # (B, C, H, W) ε̂, the model's prediction (any float dtype)
    z_ptr,  # (B, C, H, W) explicit z, read only if HAS_NOISE
    o_ptr,  # (B, C, H, W) x_{t-1}; may be x_ptr itself
    l_ptr,  # (B, C, H, W) second copy of x_{t-1}, written only if HAS_LOWP
    t_ptr,  # (B,) timestep per sample
    seed_ptr,  # (B,) int64 key per sample, read only if not HAS_NOISE
    tab_ptr,  # (T, NC) float32 coefficient table
    T, C, HW, G, TILES, stream,
    sxb, sxc, sxp, seb, sec, sep, szb, szc, szp, sob, soc, sop, slb, slc, slp,
    NC: tl.constexpr, CLIP: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_LOWP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(G, TILES, BLOCK)
    t = tl.load(t_ptr + b)
    row, bad = table_row(tab_ptr, t, T, NC)
    r_alpha = tl.load(row + 2) + bad  # 1/α_t            (tables.RECIP_ALPHA)
    eps_c = tl.load(row + 3) + bad  # β_t²/(α_t β̄_t)     (tables.EPS_COEF)
    sigma = tl.load(row + 4) + bad  # σ_t                (tables.SIGMA)
    r_sab = tl.load(row + 5) + bad  # 1/ᾱ_t              (tables.RECIP_SQRT_AB)
    x0_e = tl.load(row + 6) + bad  # β̄_t/ᾱ_t             (tables.X0_EPS)
    post_x0 = tl.load(row + 7) + bad  # ᾱ_{t-1}β_t²/β̄_t²  (tables.POST_X0)
    post_xt = tl.load(row + 8) + bad  # α_t β̄_{t-1}²/β̄_t² (tables.POST_XT)
    z0, z1, z2, z3 = noise4(seed_ptr, b, p, g, t, stream, HAS_NOISE, BLOCK)
    bl = b.to(tl.int64)
    x_ptr += bl * sxb
    e_ptr += bl * seb
    z_ptr += bl * szb
    o_ptr += bl * sob
    l_ptr += bl * slb
    c = 4 * g
    _step_lane(x_ptr, e_ptr, z_ptr, o_ptr, l_ptr, c, p, HW, C, sxc, sxp, sec, sep, szc, szp, soc, sop, slc, slp,
               r_alpha, eps_c, sigma, r_sab, x0_e, post_x0, post_xt, z0, CLIP, HAS_NOISE, HAS_LOWP)
    _step_lane(x_ptr, e_ptr, z_ptr, o_ptr, l_ptr, c + 1, p, HW, C, sxc, sxp, sec, sep, szc, szp, soc, sop, slc, slp,
               r_alpha, eps_c, sigma, r_sab, x0_e, post_x0, post_xt, z1, CLIP, HAS_NOISE, HAS_LOWP)
    _step_lane(x_ptr, e_ptr, z_ptr, o_ptr, l_ptr, c + 2, p, HW, C, sxc, sxp, sec, sep, szc, szp, soc, sop, slc, slp,
               r_alpha, eps_c, sigma, r_sab, x0_e, post_x0, post_xt, z2, CLIP, HAS_NOISE, HAS_LOWP)
    _step_lane(x_ptr, e_ptr, z_ptr, o_ptr, l_ptr, c + 3, p, HW, C, sxc, sxp, sec, sep, szc, szp, soc, sop, slc, slp,
               r_alpha, eps_c, sigma, r_sab, x0_e, post_x0, post_xt, z3, CLIP, HAS_NOISE, HAS_LOWP)


def _step_launch(x, eps_hat, t, table, seeds, noise, out, out_lowp, clip, stream):
    B, C, H, W = x.shape
    HW, G = H * W, (C + 3) // 4
    block, warps, tiles = launch_config(HW)
    has_noise, has_lowp = noise is not None, out_lowp is not None
    z = noise if has_noise else x
    lp = out_lowp if has_lowp else out
    _step_kernel[(B * G * tiles,)](
        x, eps_hat, z, out, lp, t, t if has_noise else seeds, table,
        table.shape[0], C, HW, G, tiles, stream,
        *_checks.pixel_strides(x), *_checks.pixel_strides(eps_hat), *_checks.pixel_strides(z),
        *_checks.pixel_strides(out), *_checks.pixel_strides(lp),
        NC=tables.NCOEF, CLIP=clip, HAS_NOISE=has_noise, HAS_LOWP=has_lowp, BLOCK=block, num_warps=warps,
    )


def _step_torch(x, eps_hat, t, table, seeds, noise, out, out_lowp, clip, stream):
    f = _checks.compute_dtype(x)
    z = noise_torch(noise, seeds, t, stream, x, f)
    coef = table[t].to(f)  # (B, NCOEF)

    def col(k):
        return coef[:, k].view(-1, 1, 1, 1)

    xf, ef = x.to(f), eps_hat.to(f)
    if clip:
        x0 = (xf * col(tables.RECIP_SQRT_AB) - col(tables.X0_EPS) * ef).clamp(-1.0, 1.0)
        mu = col(tables.POST_X0) * x0 + col(tables.POST_XT) * xf
    else:
        mu = xf * col(tables.RECIP_ALPHA) - col(tables.EPS_COEF) * ef
    y = mu + col(tables.SIGMA) * z
    out.copy_(y)
    if out_lowp is not None:
        out_lowp.copy_(y)


@torch.library.custom_op("fastddpm::reverse_step_", mutates_args=("out", "out_lowp"))
def _step_op(
    x: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
    seeds: Optional[torch.Tensor], noise: Optional[torch.Tensor],
    out: torch.Tensor, out_lowp: Optional[torch.Tensor], clip: bool, stream: int,
) -> None:
    impl = _step_launch if _checks.use_triton(x) else _step_torch
    impl(x, eps_hat, t, table, seeds, noise, out, out_lowp, clip, stream)


@_step_op.register_fake
def _(x, eps_hat, t, table, seeds, noise, out, out_lowp, clip, stream):
    return None


def reverse_step(
    x: torch.Tensor,
    eps_hat: torch.Tensor,
    t: torch.Tensor,
    table: torch.Tensor,
    *,
    seeds=None,
    noise: Optional[torch.Tensor] = None,
    clip: bool = False,
    out: Optional[torch.Tensor] = None,
    out_lowp: Optional[torch.Tensor] = None,
    stream: int = STREAM_REVERSE,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} for a batch with one timestep per sample.

    x:        x_t (B, C, H, W); eps_hat: the model's ε̂, same shape, any float dtype/layout.
    t:        (B,) int timesteps in [0, T); table: coef_table(alphas_cumprod, variance).
    seeds:    int or (B,) int64: z drawn in-kernel at (seed, stream, t, c, h, w).
    noise:    explicit z instead of seeds.
    clip:     clamp the predicted x̂_0 to [-1, 1] and take the posterior mean.
    out:      where to write x_{t-1} (x itself for in place); default a new tensor like x.
    out_lowp: optional second output (any float dtype, dense layout) written in the same pass.
    Returns out.
    """
    _checks.check_image(x, "x")
    _checks.check_like(eps_hat, "eps_hat", x, "x")
    T = _checks.check_table(table, x, tables.NCOEF)
    _checks.check_timesteps(t, x.shape[0], T, x.device)
    seeds = _checks.check_noise_source(seeds, noise, x, "x")
    if out is None:
        out = torch.empty_like(x)
    else:
        _checks.check_like(out, "out", x, "x")
    if out_lowp is not None:
        _checks.check_like(out_lowp, "out_lowp", x, "x")
    torch.ops.fastddpm.reverse_step_(x, eps_hat, t, table, seeds, noise, out, out_lowp, bool(clip), _checks.check_stream(stream))
    return out
