"""The noise contract: every normal fastddpm draws is a pure function of its address.

    key     = the sample's int64 seed, its two's-complement bits as (lo, hi) words
    counter = (pixel, channel group, timestep, stream)          # four uint32 words

pixel = h * W + w is the logical position in the image plane and the channel group is
g = c // 4: one Philox4x32-10 call gives four words, and lane j feeds channel 4g + j of
that pixel. The address never mentions the memory layout, the batch row or the device,
so a sample's noise is the same in any batch, layout or machine. docs/noise.md states
the contract in full; this module is its one owner (the stream registry, the counter
layout, the words -> normals transform), on the device and, bit for bit, on the host.

Words -> normals, for the lanes (w0, w1) and likewise (w2, w3):
    u = ((w0 >> 9) + 1/2) 2^-23                     uniform in (0, 1), exact in fp32
    r = sqrt(max(-2 ln 2 * log2(u), 0))             the Box-Muller radius
    s = (w1 as int32) >> 9                           arithmetic shift: s in [-2^22, 2^22)
    θ = (s + 1/2) * (2π 2^-23)                       the angle, in (-π, π)
    (n0, n1) = (r cos θ, r sin θ)
The uniforms and angles are computed identically everywhere; log2, sqrt, sin and cos are
the GPU's hardware approximations on CUDA and the precise functions elsewhere (see
_fastmath.py), which bounds the CPU/GPU difference (docs/noise.md). |n| < 5.77.
"""

import warnings

import torch
import triton
import triton.language as tl

from . import _checks, _fastmath

# The stream registry: the counter's last word names what a draw is for.
STREAM_NOISING = 0  # ε of the forward process q(x_t | x_0); the loss regenerates it
STREAM_REVERSE = 1  # z of a reverse step from timestep t
STREAM_PRIOR = 2  # x_T ~ N(0, I), the sampler's starting point
STREAM_TIMESTEP = 3  # the training timesteps: word 0 of counter (k lo, k hi, 0, 3) for sample k
STREAM_LABEL_DROP = 4  # classifier-free training: word 0 of counter (k lo, k hi, 0, 4) < p 2^32 drops sample k's label
STREAM_FLIP = 5  # --hflip: bit 0 of word 0 of counter (k lo, k hi, 0, 5) flips sample k's image left-right
STREAMS = {"noising": STREAM_NOISING, "reverse": STREAM_REVERSE, "prior": STREAM_PRIOR, "timestep": STREAM_TIMESTEP,
           "label_drop": STREAM_LABEL_DROP, "flip": STREAM_FLIP}

# Philox4x32 (Salmon et al. 2011): round multipliers and key increments, shared by the
# kernels (constexpr) and the torch twin (.value).
ROUND_A = tl.constexpr(0xD2511F53)
ROUND_B = tl.constexpr(0xCD9E8D57)
KEY_A = tl.constexpr(0x9E3779B9)
KEY_B = tl.constexpr(0xBB67AE85)
ROUNDS = tl.constexpr(10)

# Constants of the transform, likewise shared.
U_SCALE = tl.constexpr(2.0**-23)
U_HALF = tl.constexpr(2.0**-24)  # half a step of the uniform grid
ANGLE_SCALE = tl.constexpr(6.283185307179586 * 2.0**-23)  # 2π 2^-23
ANGLE_HALF = tl.constexpr(6.283185307179586 * 2.0**-24)  # half of it, exact
NEG_2LN2 = tl.constexpr(-1.3862943611198906)  # -2 ln 2: -2 ln u = -2 ln 2 log2 u
MAX_ABS_NORMAL = 5.77  # > sqrt(-2 ln 2^-24) = 5.76811 (u >= 2^-24), fp32 rounding included


# --------------------------------------------------------------------------- device


@triton.jit
def _mulhilo(a, b):
    # the 64-bit product of two uint32 values, as (high, low) words: one IMAD.WIDE.U32
    p = b.to(tl.uint64) * a
    return (p >> 32).to(tl.uint32), p.to(tl.uint32)


@triton.jit
def philox4(seed, pixel, group, t, stream):
    """The four uint32 words of counter (pixel, group, t, stream) under key `seed`: one
    Philox4x32-10 call, the words of `tl.philox` (and of the torch twin) bit for bit.

    seed:   int64 scalar; pixel: int32 block; group, t, stream: int scalars (int32,
    int64 or constexpr), taken modulo 2^32. Returns four uint32 blocks shaped like pixel.
    """
    c0 = pixel.to(tl.uint32, bitcast=True)
    wide = c0.to(tl.int64) * 0  # scalars of any int type broadcast through int64, then wrap
    c1 = (wide + group).to(tl.uint32)
    c2 = (wide + t).to(tl.uint32)
    c3 = (wide + stream).to(tl.uint32)
    key = seed.to(tl.uint64, bitcast=True)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = (key >> 32).to(tl.uint32)
    for _ in tl.static_range(ROUNDS):
        hi_a, lo_a = _mulhilo(ROUND_A, c0)
        hi_b, lo_b = _mulhilo(ROUND_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = k0 + KEY_A
        k1 = k1 + KEY_B
    return c0, c1, c2, c3


@triton.jit
def _radius(w):
    u = (w >> 9).to(tl.int32).to(tl.float32) * U_SCALE + U_HALF  # exact: ((w >> 9) + 1/2) 2^-23
    return tl.sqrt(tl.maximum(NEG_2LN2 * _fastmath.log2(u), 0.0))


@triton.jit
def _angle(w):
    s = w.to(tl.int32, bitcast=True) >> 9
    return tl.fma(s.to(tl.float32), ANGLE_SCALE, ANGLE_HALF)  # (s + 1/2) 2π 2^-23, rounded once


@triton.jit
def normals4(w0, w1, w2, w3):
    """Four uint32 word blocks -> four fp32 normal blocks (Box-Muller on lane pairs)."""
    r01 = _radius(w0)
    th01 = _angle(w1)
    r23 = _radius(w2)
    th23 = _angle(w3)
    return r01 * _fastmath.cos(th01), r01 * _fastmath.sin(th01), r23 * _fastmath.cos(th23), r23 * _fastmath.sin(th23)


@triton.jit
def randn4(seed, pixel, group, t, stream):
    """The normals of channels 4g .. 4g+3 at `pixel`: one Philox call, four fp32 blocks."""
    w0, w1, w2, w3 = philox4(seed, pixel, group, t, stream)
    return normals4(w0, w1, w2, w3)


# --------------------------------------------------------------------------- host (torch)

_M32 = 0xFFFFFFFF


def _mulhilo_torch(a: int, b: torch.Tensor):
    # a: uint32 constant, b: int64 tensor holding uint32 values -> the (high, low) words of a b.
    # The product is built from 16-bit halves of a, so no int64 ever overflows: a wrapped int64
    # product would do it in one multiply, but signed overflow is undefined behaviour in the C++
    # that torch.compile generates, and Inductor did miscompile it (a dropped mask: wrong words
    # for a negative seed once the counters were broadcast from (B, G, HW) instead of gathered).
    lo = b * (a & 0xFFFF)  # < 2**48
    mid = b * (a >> 16) + (lo >> 16)  # < 2**49: a b = mid 2**16 + (lo & 0xFFFF)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (lo & 0xFFFF)


def philox(seed: torch.Tensor, c0, c1, c2, c3, rounds: int = ROUNDS.value):
    """Philox4x32-10 on the host: int64 tensors holding uint32 counter words (all
    broadcastable), keyed by `seed` (int64; its two's-complement bits are the 64-bit key,
    as in Triton). Returns four int64 tensors with values in [0, 2**32): the same words
    the kernels draw."""
    for name, v in (("seed", seed), ("c0", c0), ("c1", c1), ("c2", c2), ("c3", c3)):
        if not (v.dtype in (torch.int32, torch.int64) if isinstance(v, torch.Tensor) else type(v) is int):
            raise TypeError(f"{name}: expected an int or an int64 (or int32) tensor, got "
                            f"{v.dtype if isinstance(v, torch.Tensor) else type(v).__name__}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected a positive int (10 is Philox4x32-10), got {rounds!r}")
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    for _ in range(rounds):
        hi_a, lo_a = _mulhilo_torch(ROUND_A.value, c0)
        hi_b, lo_b = _mulhilo_torch(ROUND_B.value, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + KEY_A.value) & _M32
        k1 = (k1 + KEY_B.value) & _M32
    return c0, c1, c2, c3


def words_torch(seeds: torch.Tensor, t: torch.Tensor, stream: int, C: int, HW: int) -> torch.Tensor:
    """The raw words of every counter of a (B, C, H*W) batch: int64 (B, G, 4, HW),
    G = ceil(C / 4); words[b, g, j, p] is lane j of counter (p, g, t[b], stream). Computed
    as the draws are (compiled unless cpu_twin("eager")), so the words tests cover both."""
    return _twin("words", seeds, t, stream, (C + 3) // 4, HW)


def uniform_torch(words: torch.Tensor) -> torch.Tensor:
    """u = ((w >> 9) + 1/2) 2^-23, exact in fp32."""
    return ((words >> 9).to(torch.float32) + 0.5) * U_SCALE.value  # both steps exact


def angle_torch(words: torch.Tensor) -> torch.Tensor:
    """θ = ((w as int32) >> 9 + 1/2) 2π 2^-23, in (-π, π)."""
    s = ((words & _M32) ^ 0x80000000) - 0x80000000  # the int32 value of the word
    return ((s >> 9).to(torch.float32) + 0.5) * ANGLE_SCALE.value  # exact sum, one rounding: the kernel's fma


def normals_torch(words: torch.Tensor) -> torch.Tensor:
    """(..., 4, N) words -> (..., 4, N) fp32 normals, the transform of `normals4`."""
    return _normals_of(words[..., 0, :], words[..., 1, :], words[..., 2, :], words[..., 3, :])


def _normals_of(w0, w1, w2, w3) -> torch.Tensor:
    """Four word tensors (N,) -> (4, N) normals (or (..., 4, N)): Box-Muller on (w0, w1), (w2, w3)."""
    u0, u2 = uniform_torch(w0), uniform_torch(w2)
    th1, th3 = angle_torch(w1), angle_torch(w3)
    r01 = torch.sqrt(torch.clamp(NEG_2LN2.value * torch.log2(u0), min=0.0))
    r23 = torch.sqrt(torch.clamp(NEG_2LN2.value * torch.log2(u2), min=0.0))
    return torch.stack((r01 * torch.cos(th1), r01 * torch.sin(th1), r23 * torch.cos(th3), r23 * torch.sin(th3)), dim=-2)


def _words4(seeds: torch.Tensor, t: torch.Tensor, stream: torch.Tensor, G: int, HW: int):
    """The four int64 word tensors (B, G, HW) of a batch's counters: [b, g, p] is lane j of
    counter (p, g, t[b], stream) under key seeds[b]. The counters are broadcast from (B, 1, 1),
    (1, G, 1) and (1, 1, HW), so compiled it is one loop over pixels per (b, g), with no index
    arithmetic; stream is a 0-d tensor, so one graph serves every stream."""
    B = seeds.shape[0]
    g = torch.arange(G, device=seeds.device, dtype=torch.int64).view(1, G, 1)
    p = torch.arange(HW, device=seeds.device, dtype=torch.int64).view(1, 1, HW)
    words = philox(seeds.view(B, 1, 1), p, g, (t & _M32).view(B, 1, 1), stream & _M32)
    return [w.expand(B, G, HW) for w in words]


def _words_grouped(seeds, t, stream, G: int, HW: int) -> torch.Tensor:
    """(B, G, 4, HW) int64 words of those counters."""
    return torch.stack(_words4(seeds, t, stream, G, HW), dim=2)


def _normals_grouped(seeds, t, stream, G: int, HW: int) -> torch.Tensor:
    """(B, G, 4, HW) fp32 normals of those counters: the transform applied to the words as they
    are made (compiled, one loop: no word is stored)."""
    return _normals_of(*_words4(seeds, t, stream, G, HW))


_TWINS = {"words": _words_grouped, "normals": _normals_grouped}
_compiled = {}  # name -> torch.compile of _TWINS[name], made at the first call that wants it


def _twin(name: str, seeds, t, stream: int, G: int, HW: int) -> torch.Tensor:
    """_TWINS[name] of a batch, (B, G, 4, HW): [b, g, j, p] is lane j of counter (p, g, t[b]).
    Compiled (one fused loop over the Philox rounds and the transform, about 10x faster than
    the few hundred separate int64 tensor ops of the eager twin) unless cpu_twin("eager") or
    FASTDDPM_CPU_TWIN=eager; traced into the caller's graph when the caller is being compiled.
    The same words either way; the normals within docs/noise.md's tolerance of each other
    (vectorized log2, sqrt, sin, cos)."""
    B = seeds.shape[0]
    fn = _TWINS[name]
    if torch.compiler.is_compiling():  # traced into the caller's graph: compiled with it, fused with what uses it
        return fn(seeds.to(torch.int64).view(-1), t.to(torch.int64).view(-1),
                  torch.tensor(stream, dtype=torch.int64, device=seeds.device), G, HW)
    if _checks.cpu_twin_name() == "compiled" and seeds.device.type == "cpu":
        fn = _compiled.get(name)
        if fn is None:
            fn = _compiled[name] = torch.compile(_TWINS[name], dynamic=True, fullgraph=True)
    # plain (not inference-mode) int64 inputs of at least two rows: no graph specialized on
    # a batch of one or on inference tensors; the pad row is cut off
    with torch.inference_mode(False), torch.no_grad():
        s = seeds.to(torch.int64).view(-1).clone()
        tt = t.to(torch.int64).view(-1).clone()
        if B == 1:
            s, tt = s.repeat(2), tt.repeat(2)
        args = (s, tt, torch.tensor(stream, dtype=torch.int64, device=seeds.device), G, HW)
        try:
            out = fn(*args)
        except Exception as e:  # the compiled one: no C++ compiler on this machine, a damaged Inductor cache, ...
            if fn is _TWINS[name]:
                raise
            first = (str(e).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"fastddpm.kernels: the compiled CPU noise twin failed ({type(e).__name__}: {first}); drawing "
                          f"with the eager twin from now on (the same words, about 10x slower); set "
                          f"FASTDDPM_CPU_TWIN=eager to skip the attempt", RuntimeWarning, stacklevel=3)
            _compiled[name] = _TWINS[name]
            out = _TWINS[name](*args)
    return out[:B]


def randn_torch(seeds: torch.Tensor, t: torch.Tensor, stream: int, shape) -> torch.Tensor:
    """The addressed normals of a (B, C, H, W) batch, fp32 (for C <= 4 a strided view: no copy)."""
    B, C, H, W = shape
    G = (C + 3) // 4
    n = _twin("normals", seeds, t, stream, G, H * W)  # lane j of group g -> channel 4g + j
    n = n[:, 0] if G == 1 else n.reshape(B, G * 4, H * W)
    return n[:, :C].reshape(B, C, H, W)


def noise_torch(noise, seeds, t, stream: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The torch twins' ε or z: the explicit `noise`, else the addressed draw, in `dtype`."""
    return (randn_torch(seeds, t, stream, like.shape) if noise is None else noise).to(dtype)
