"""Materialise addressed noise: the sampler's x_T, and the tests' view of the stream.

Training and sampling never need this (the kernels draw in place); it exists for the
prior x_T ~ N(0, I), for feeding a reference the exact noise a kernel used, and for
testing the generator itself.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _checks
from ._cast import to_storage
from ._philox import philox_words_torch, randn4, randn_torch
from ._tile import tile


@triton.jit
def _randn_kernel(
    out_ptr,  # (B, C, H, W) any float dtype, dense NCHW or NHWC
    seed_ptr,  # (B,) int64: each sample's key
    t_ptr,  # (B,) int32/int64: the counter's timestep word
    stream,  # int: the counter's stream word
    C, HW, G, TILES,  # channels, pixels, channel groups of 4, pixel tiles per group
    s_b, s_c, s_p,  # element strides of out: batch, channel, pixel
    BLOCK: tl.constexpr,  # pixels per program
):
    pid, b, g, p = tile(G, TILES, BLOCK)
    t = tl.load(t_ptr + b)
    n0, n1, n2, n3 = randn4(tl.load(seed_ptr + b), p, g, t, stream)
    base = out_ptr + b.to(tl.int64) * s_b + p * s_p
    ty = out_ptr.dtype.element_ty
    c = 4 * g
    tl.store(base + c * s_c, to_storage(n0, ty), mask=p < tl.where(c < C, HW, 0))  # writes N, reads 0
    tl.store(base + (c + 1) * s_c, to_storage(n1, ty), mask=p < tl.where(c + 1 < C, HW, 0))
    tl.store(base + (c + 2) * s_c, to_storage(n2, ty), mask=p < tl.where(c + 2 < C, HW, 0))
    tl.store(base + (c + 3) * s_c, to_storage(n3, ty), mask=p < tl.where(c + 3 < C, HW, 0))


@triton.jit
def _words_kernel(
    out_ptr,  # (B, G, 4, HW) int64: the raw Philox words, for testing the generator
    seed_ptr, t_ptr, stream, HW, G, TILES,
    BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(G, TILES, BLOCK)
    pm = p < HW
    seed = tl.load(seed_ptr + b)
    t = tl.load(t_ptr + b)
    c0 = p.to(tl.uint32, bitcast=True)
    zero = c0 * 0
    w0, w1, w2, w3 = tl.philox(seed, c0, zero + g.to(tl.uint32), zero + t.to(tl.uint32), zero + stream)
    base = out_ptr + ((b * G + g) * 4).to(tl.int64) * HW + p
    tl.store(base, w0.to(tl.int64), mask=pm)
    tl.store(base + HW, w1.to(tl.int64), mask=pm)
    tl.store(base + 2 * HW, w2.to(tl.int64), mask=pm)
    tl.store(base + 3 * HW, w3.to(tl.int64), mask=pm)


def launch_config(HW: int):
    """(BLOCK, num_warps, tiles) for a pixel dimension of HW: up to 1024 pixels
    (4096 lanes) a program, so a 32x32 image is one program per channel group."""
    block = min(1024, triton.next_power_of_2(max(HW, 16)))
    warps = 4 if block >= 512 else (2 if block >= 128 else 1)
    return block, warps, triton.cdiv(HW, block)


def _randn_launch(out, seeds, t, stream):
    B, C, H, W = out.shape
    HW, G = H * W, (C + 3) // 4
    block, warps, tiles = launch_config(HW)
    s_b, s_c, s_p = _checks.pixel_strides(out)
    _randn_kernel[(B * G * tiles,)](out, seeds, t, stream, C, HW, G, tiles, s_b, s_c, s_p, BLOCK=block, num_warps=warps)


def _randn_torch(out, seeds, t, stream):
    out.copy_(randn_torch(seeds, t, stream, out.shape))


@torch.library.custom_op("fastddpm::randn_", mutates_args=("out",))
def _randn_op(out: torch.Tensor, seeds: torch.Tensor, t: torch.Tensor, stream: int) -> None:
    if _checks.use_triton(out):
        _randn_launch(out, seeds, t, stream)
    else:
        _randn_torch(out, seeds, t, stream)


@_randn_op.register_fake
def _(out, seeds, t, stream):
    return None


def randn_(out: torch.Tensor, seeds, t: torch.Tensor, stream: int) -> torch.Tensor:
    """Fill `out` (B, C, H, W) in place with the addressed normals of
    (seeds[b], stream, t[b], c, h, w), in out's dtype and layout. Returns out."""
    _checks.check_image(out, "out")
    B = out.shape[0]
    seeds = _checks.make_seeds(seeds, B, out.device)
    _checks.check_timesteps(t, B, 2**32, out.device)
    torch.ops.fastddpm.randn_(out, seeds, t, _checks.check_stream(stream))
    return out


def randn(
    shape,
    seeds,
    t: Optional[torch.Tensor] = None,
    stream: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
    channels_last: bool = False,
) -> torch.Tensor:
    """A new (B, C, H, W) tensor of addressed normals. t defaults to zeros (the prior
    and other draws that belong to no timestep)."""
    B, C, H, W = shape
    if B < 1:
        raise ValueError(f"shape: expected a batch of at least 1, got {tuple(shape)}")
    if device is None:
        device = seeds.device if isinstance(seeds, torch.Tensor) else torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((B, C, H, W), dtype=dtype, device=device, memory_format=fmt)
    if t is None:
        t = torch.zeros(B, dtype=torch.int64, device=device)
    return randn_(out, seeds, t, stream)


def philox_words(seeds: torch.Tensor, t: torch.Tensor, stream: int, C: int, HW: int) -> torch.Tensor:
    """The raw Philox words behind a (B, C, H*W) draw, int64 (B, G, 4, HW): lane j of
    the counter (p, g, t[b], stream) under key seeds[b]. For testing the generator."""
    B, G = seeds.shape[0], (C + 3) // 4
    if not _checks.use_triton(seeds):
        return philox_words_torch(seeds, t, stream, C, HW)
    out = torch.empty((B, G, 4, HW), dtype=torch.int64, device=seeds.device)
    block, warps, tiles = launch_config(HW)
    _words_kernel[(B * G * tiles,)](out, seeds, t, stream, HW, G, tiles, BLOCK=block, num_warps=warps)
    return out
