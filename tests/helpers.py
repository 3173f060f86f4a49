"""Tolerances (one place, per dtype) and small builders shared by the tests."""

import torch

from fastddpm import Schedule, UNet, UNetConfig

# fp32 and fp64: PyTorch's own defaults for torch.testing.assert_close.
DEFAULT_TOL = {torch.float32: dict(rtol=1.3e-6, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-7)}
LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# One-tile shapes test the arithmetic: C = 3 leaves a lane of the channel group idle, C = 5
# needs a second group, 17 x 19 is not a power of two; C = 1 is Fashion-MNIST.
SHAPES = ((3, 3, 17, 19), (2, 1, 8, 8), (2, 5, 7, 9), (4, 4, 16, 16))
# Shapes past the first tile (1024 pixels a program) test the indexing: several programs per
# image with a partial last tile (33 x 35, 45 x 23, 40 x 30, 33 x 33), whole tiles (64 x 64),
# many tiles (256 x 256), odd channel counts (1, 5, 7: a second, partial channel group).
MULTI_TILE = ((2, 3, 33, 35), (1, 4, 64, 64), (1, 3, 256, 256), (2, 1, 45, 23), (2, 5, 40, 30), (1, 7, 33, 33))

SCHEDULE = Schedule.linear()


def timesteps(B: int, T: int, device) -> torch.Tensor:
    """Per-sample timesteps that always include 0 and T - 1."""
    g = torch.Generator().manual_seed(B * 7919 + T)
    t = torch.randint(0, T, (B,), generator=g)
    t[0] = 0
    t[-1] = T - 1
    return t.to(device)


def rand_image(shape, dtype, device, seed: int, channels_last: bool = False, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device)


def half_ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half the spacing of `dtype` numbers at |x|: the error of rounding x to dtype."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(x.float())  # |x| = m 2**e, m in [0.5, 1)
    normal = torch.ldexp(torch.full_like(x.float(), fi.eps / 4), e)
    return normal.clamp(min=fi.tiny * fi.eps / 2)  # subnormals are evenly spaced


def assert_close_fp(actual, expected, dtype, ref_lowp=None):
    """fp32/fp64: PyTorch's default tolerance. bf16/fp16 (flash-attention's rule): the
    fast path's error against the fp32 reference is at most twice the error of the plain
    reference run in that low dtype -- plus, element by element, the half ulp that
    storing the exact answer in that dtype costs (a kernel that computes in fp32 and
    rounds once can have that much error where the bf16 reference was lucky)."""
    if dtype not in LOW_PRECISION:
        torch.testing.assert_close(actual.to(expected.dtype), expected, **DEFAULT_TOL[expected.dtype])
        return
    assert ref_lowp is not None, "low-precision comparison needs the reference run in that dtype"
    exp = expected.float()
    err = (actual.float() - exp).abs()
    ref_err = (ref_lowp.float() - exp).abs().max().item()
    excess = (err - 2 * ref_err - half_ulp(exp, dtype)).max().item()
    assert excess <= 0, (
        f"{dtype}: fast path error {err.max().item():.3g} exceeds 2 x reference error "
        f"{ref_err:.3g} + half an ulp by {excess:.3g}"
    )


def assert_fp32_chain(fast, exact, plain, steps: int, scale=None, gains=None):
    """A fast fp32 chain against the float64 one: at most twice the error of the plain fp32
    reference chain, plus 2^-24 (half an fp32 ulp at 1) a step at the state's scale (the
    larger of |exact| and the prior's 4; `scale` fixes it instead), each step's half-ulp times
    its gain when `gains` are given (chain_gains: how much a step magnifies a rounding of its
    input, 1/α at a one-step chain from t = 999, ~157 on the linear schedule)."""
    err, plain_err = (fast.double() - exact).abs().max().item(), (plain.double() - exact).abs().max().item()
    scale = max(exact.abs().max().item(), 4.0) if scale is None else scale
    per_step = steps if gains is None else sum(gains)
    assert err <= 2 * plain_err + per_step * 2.0**-24 * scale, (err, plain_err)


def chain_gains(schedule, timesteps) -> list:
    """Each step's magnification of a rounding in its input: α_next / α_t (α = √ᾱ; α = 1 after
    the last step), ≥ 1. A step recovers x̂_0 = (x − σ ε̂)/α_t and carries it to α_next x̂_0, so a
    half-ulp in x or ε̂ reaches the next state times α_next/α_t: at a one-step chain from t = 999
    that is 1/α_999 ≈ 157, where which of two correct fp32 formulations rounds closer to the
    float64 chain is the luck of the machine's vector width (an AVX-512 CPU, 2026-12-06: fast
    4.2e-5, reference 1.7e-5, the old bound of one half-ulp a step 3.4e-5)."""
    a = schedule.alphas_cumprod.double().sqrt()
    ts = [int(t) for t in timesteps]
    return [(a[n].item() if n is not None else 1.0) / a[t].item() for t, n in zip(ts, ts[1:] + [None])]


def addressed_noise(shape, seeds, t, stream, device):
    """The addressed normals from the torch twin on the CPU, moved to `device`: feeding
    these to the reference also checks that CPU and device draw the same noise."""
    from fastddpm.kernels.philox import randn_torch

    return randn_torch(seeds.cpu(), t.cpu(), stream, shape).to(device)


def triton_backend(device):
    """On CPU route to the interpreted Triton kernels; on CUDA they run anyway."""
    import contextlib

    from fastddpm import kernels as K

    return K.cpu_backend("triton") if device.type == "cpu" else contextlib.nullcontext()


# (shape, dtype) pairs for the kernel-vs-reference tests: every one-tile shape in every
# dtype (the arithmetic), every multi-tile shape in fp32 and two in a low dtype (the
# indexing): a pick, not a product, to keep the suite's time in check.
CASES = (
    [(s, d) for s in SHAPES for d in DTYPES]
    + [(s, torch.float32) for s in MULTI_TILE]
    + [((2, 3, 33, 35), torch.bfloat16), ((2, 5, 40, 30), torch.float16)]
)


def case_id(case) -> str:
    shape, dtype = case
    return "x".join(map(str, shape)) + "-" + str(dtype).replace("torch.", "")


def ops_id(ops) -> str:
    return ops.__name__.rsplit(".", 1)[-1]


def tiny_unet() -> UNet:
    """The sampler tests' model: an 8x8, 3-channel U-Net with attention, seed 0, eval mode."""
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=3, out_channels=3, sample_size=8, base_channels=16, channel_mult=(1, 2),
                     layers_per_block=1, attn_resolutions=(4,), norm_groups=8)
    return UNet(cfg).eval()
