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
from ._tile import at, channels_last, geometry, lane_mask, launch, tile
from .philox import normals4, philox4, randn_torch, words_torch


@triton.jit
def _randn_lane(out_ptr, b, c, p, HW, n, C: tl.constexpr, G: tl.constexpr, CL: tl.constexpr):
    m = lane_mask(p, HW, c, C, G)
    tl.store(at(out_ptr, b, c, p, HW, C, CL), to_storage(n, out_ptr.dtype.element_ty), mask=m)  # writes N


@triton.jit
def _randn_kernel(
    out_ptr,  # (B, C, H, W) any float dtype, dense NCHW or NHWC
    seed_ptr,  # (B,) int64: each sample's key
    t_ptr,  # (B,) int32/int64: the counter's timestep word
    stream,  # int: the counter's stream word
    HW,  # pixels
    C: tl.constexpr, G: tl.constexpr, TILES: tl.constexpr, CL: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(TILES, G, BLOCK)
    w0, w1, w2, w3 = philox4(tl.load(seed_ptr + b), p, g, tl.load(t_ptr + b), stream)
    n0, n1, n2, n3 = normals4(w0, w1, w2, w3)
    c = 4 * g
    _randn_lane(out_ptr, b, c, p, HW, n0, C, G, CL)
    if C > 1:
        _randn_lane(out_ptr, b, c + 1, p, HW, n1, C, G, CL)
    if C > 2:
        _randn_lane(out_ptr, b, c + 2, p, HW, n2, C, G, CL)
    if C > 3:
        _randn_lane(out_ptr, b, c + 3, p, HW, n3, C, G, CL)


@triton.jit
def _words_kernel(
    out_ptr,  # (B, G, 4, HW) int64: the raw Philox words, for testing the generator
    seed_ptr, t_ptr, stream, HW,
    G: tl.constexpr, TILES: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(TILES, G, BLOCK)
    w0, w1, w2, w3 = philox4(tl.load(seed_ptr + b), p, g, tl.load(t_ptr + b), stream)
    m = p < HW
    base = out_ptr + ((b * G + g) * 4).to(tl.int64) * HW + p
    tl.store(base, w0.to(tl.int64), mask=m)
    tl.store(base + HW, w1.to(tl.int64), mask=m)
    tl.store(base + 2 * HW, w2.to(tl.int64), mask=m)
    tl.store(base + 3 * HW, w3.to(tl.int64), mask=m)


def _randn_launch(out, seeds, t, stream):
    L = launch(out)
    _randn_kernel[L.grid](out, seeds, t, stream, L.HW, CL=channels_last(out), **L.meta())


@torch.library.custom_op("fastddpm::randn_", mutates_args=("out",))
def _randn_op(out: torch.Tensor, seeds: torch.Tensor, t: torch.Tensor, stream: int) -> None:
    if _checks.use_triton(out):
        _randn_launch(out, seeds, t, stream)
    else:
        out.copy_(randn_torch(seeds, t, stream, out.shape))


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
    stream = _checks.check_stream(stream)
    if _checks.use_triton(out):
        torch.ops.fastddpm.randn_(out, seeds, t, stream)
    else:  # CPU tensors: the twin directly, as the other ops (no dispatch; traced under torch.compile)
        out.copy_(randn_torch(seeds, t, stream, out.shape))
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
    shape = tuple(shape)
    if len(shape) != 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape: expected (B, C, H, W) of positive ints, got {shape}")
    B = shape[0]
    if device is None:
        device = seeds.device if isinstance(seeds, torch.Tensor) else torch.device("cpu")
    fmt = torch.channels_last if _checks.check_flag(channels_last, "channels_last") else torch.contiguous_format
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)
    if t is None:
        t = torch.zeros(B, dtype=torch.int64, device=device)
    return randn_(out, seeds, t, stream)


def philox_words(seeds: torch.Tensor, t: torch.Tensor, stream: int, C: int, HW: int) -> torch.Tensor:
    """The raw Philox words behind a (B, C, H*W) draw, int64 (B, G, 4, HW): lane j of
    the counter (p, g, t[b], stream) under key seeds[b]. For testing the generator."""
    if not isinstance(seeds, torch.Tensor) or seeds.dtype != torch.int64 or seeds.dim() != 1 or seeds.numel() < 1:
        raise ValueError("seeds: expected a non-empty 1-D int64 tensor")
    for name, v in (("C", C), ("HW", HW)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    B, G = seeds.shape[0], (C + 3) // 4
    _checks.check_timesteps(t, B, 2**32, seeds.device)
    stream = _checks.check_stream(stream)
    if not _checks.use_triton(seeds):
        return words_torch(seeds, t, stream, C, HW)
    out = torch.empty((B, G, 4, HW), dtype=torch.int64, device=seeds.device)
    L = geometry(B, C, HW)
    _words_kernel[L.grid](out, seeds, t, stream, HW, G=L.G, TILES=L.tiles, BLOCK=L.block, num_warps=L.warps,
                          maxnreg=L.meta()["maxnreg"])
    return out
