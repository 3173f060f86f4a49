"""Addressed Gaussian noise: Philox4x32-10 in Triton and, bit for bit, in plain torch.

The noise contract (shared/DESIGN.md §2). Every normal is a pure function of

    key     = the sample's int64 seed, split into (lo, hi) 32-bit words
    counter = (pixel, channel group, timestep, stream)          # 4 x uint32

where pixel = h * W + w is the logical position in the image plane and channel group
g = c // 4. One Philox call gives four 32-bit words; lane j feeds channel 4g + j of that
pixel. The address never mentions the memory layout, the batch row or the device, so a
sample's noise is the same in any batch, layout or machine.

Words -> normals (fixed here, not borrowed from a Triton version):
    u = ((w >> 9) + 0.5) * 2**-23          # exact in fp32, u in [2**-24, 1 - 2**-24]
    (n0, n1) = Box-Muller(u0, u1),  (n2, n3) = Box-Muller(u2, u3)
so |n| < sqrt(48 ln 2) ~= 5.77 and the uniforms agree bit for bit on every device; the
normals agree up to the rounding of log, sqrt, cos and sin.
"""

import torch
import triton
import triton.language as tl

STREAM_NOISING = 0  # ε of the forward process q(x_t | x_0); the loss regenerates it
STREAM_REVERSE = 1  # z of the reverse update x_{t-1} = μ + σ_t z
STREAM_PRIOR = 2  # x_T ~ N(0, I), the sampler's starting point

_TWO_PI = 6.283185307179586
_U_SCALE = 1.1920928955078125e-07  # 2**-23


@triton.jit
def _uniform(w):
    # w: uint32 block -> fp32 in (0, 1) on a 2**-23 grid offset by half a step
    k = (w >> 9).to(tl.int32)
    return (k.to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def randn4(seed, pixel, group, t, stream):
    """Four standard normals per counter: one Philox4x32-10 call.

    seed:   int64 scalar (the sample's key)
    pixel:  int32 block, h * W + w
    group:  int32 scalar, channel group c // 4
    t:      int scalar, timestep index
    stream: int scalar, STREAM_*
    Returns four fp32 blocks shaped like `pixel`: the normals of channels 4g .. 4g+3.
    """
    c0 = pixel.to(tl.uint32, bitcast=True)
    zero = c0 * 0
    c1 = zero + group.to(tl.uint32)
    c2 = zero + t.to(tl.uint32)
    c3 = zero + stream
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    u0 = _uniform(w0)
    u1 = _uniform(w1)
    u2 = _uniform(w2)
    u3 = _uniform(w3)
    r01 = tl.sqrt(-2.0 * tl.log(u0))
    th01 = 6.283185307179586 * u1
    r23 = tl.sqrt(-2.0 * tl.log(u2))
    th23 = 6.283185307179586 * u3
    return r01 * tl.cos(th01), r01 * tl.sin(th01), r23 * tl.cos(th23), r23 * tl.sin(th23)


# --------------------------------------------------------------------------- torch twin

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor):
    # a: uint32 constant, b: int64 tensor holding uint32 values. a * b < 2**64 does not
    # fit int64, so split b in 16-bit halves: every partial product stays below 2**48.
    p_lo = a * (b & 0xFFFF)
    p_hi = a * (b >> 16)
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return hi, lo


def philox_torch(seed: torch.Tensor, c0, c1, c2, c3, rounds: int = 10):
    """Philox4x32-10 on int64 tensors holding uint32 values (all broadcastable).

    seed: int64 tensor; its two's-complement bits are the 64-bit key, as in Triton.
    Returns four int64 tensors with values in [0, 2**32).
    """
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    for _ in range(rounds):
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def philox_words_torch(seeds: torch.Tensor, t: torch.Tensor, stream: int, C: int, HW: int):
    """The raw words of every counter of a (B, C, H*W) image batch.

    Returns int64 (B, G, 4, HW), G = ceil(C / 4): words[b, g, j, p] is lane j of the
    counter (p, g, t[b], stream) under key seeds[b].
    """
    B, G = seeds.shape[0], (C + 3) // 4
    dev = seeds.device
    pixel = torch.arange(HW, device=dev, dtype=torch.int64).view(1, 1, HW)
    group = torch.arange(G, device=dev, dtype=torch.int64).view(1, G, 1)
    tt = (t.to(torch.int64) & _M32).view(B, 1, 1)
    key = seeds.to(torch.int64).view(B, 1, 1)
    shape = (B, G, HW)
    c0 = pixel.expand(shape)
    c1 = group.expand(shape)
    c2 = tt.expand(shape)
    c3 = torch.full(shape, stream, device=dev, dtype=torch.int64)
    return torch.stack(philox_torch(key, c0, c1, c2, c3), dim=2)


def uniform_torch(words: torch.Tensor) -> torch.Tensor:
    return ((words >> 9).to(torch.float32) + 0.5) * _U_SCALE


def noise_torch(noise, seeds, t, stream: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The torch twins' ε or z: the explicit `noise`, else the addressed draw, in `dtype`."""
    return (randn_torch(seeds, t, stream, like.shape) if noise is None else noise).to(dtype)


def randn_torch(seeds: torch.Tensor, t: torch.Tensor, stream: int, shape) -> torch.Tensor:
    """The addressed normals of a (B, C, H, W) batch, fp32, contiguous."""
    B, C, H, W = shape
    w = philox_words_torch(seeds, t, stream, C, H * W)  # (B, G, 4, HW)
    u = uniform_torch(w)
    r01 = torch.sqrt(-2.0 * torch.log(u[:, :, 0]))
    th01 = _TWO_PI * u[:, :, 1]
    r23 = torch.sqrt(-2.0 * torch.log(u[:, :, 2]))
    th23 = _TWO_PI * u[:, :, 3]
    n = torch.stack(
        (r01 * torch.cos(th01), r01 * torch.sin(th01), r23 * torch.cos(th23), r23 * torch.sin(th23)),
        dim=2,
    )  # (B, G, 4, HW)
    return n.reshape(B, -1, H * W)[:, :C].reshape(B, C, H, W)
