"""Reverse update: the fused kernel against the reference, every variance, clipping, one-tile
and multi-tile shapes, both layouts and CPU backends; the shared contract of both paths."""

import pytest
import torch
from helpers import DTYPES, MULTI_TILE, SCHEDULE, SHAPES, addressed_noise, assert_close_fp, ops_id, rand_image, timesteps

from fastddpm import Schedule, fused
from fastddpm import kernels as K
from fastddpm import reference as R

OPS = [fused, R]


def _inputs(shape, dtype, device, channels_last, seed=0, learned=False):
    # x_t at the scale of a mid-schedule sample; ε̂ like a model's output. Scale 2 makes
    # clipping of x̂_0 active for a good fraction of elements. learned: the output of a
    # learned-Σ model, (B, 2C, H, W): ε̂, then v spread over [-1, 1] (ends included).
    x = rand_image(shape, dtype, device, seed + 1, channels_last, scale=2.0)
    eps = rand_image(shape, dtype, device, seed + 2, channels_last)
    z = rand_image(shape, dtype, device, seed + 3, channels_last)
    if learned:
        v = rand_image(shape, torch.float32, device, seed + 4, channels_last, scale=1.5).clamp(-1, 1).to(dtype)
        eps = torch.cat([eps, v], dim=1)
    return x, eps, z


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("variance", K.VARIANCES)
@pytest.mark.parametrize("clip", [False, True])
def test_explicit_noise_matches_reference(impl, device, shape, dtype, channels_last, variance, clip):
    x, eps, z = _inputs(shape, dtype, device, channels_last, learned=variance == "learned")
    t = timesteps(shape[0], SCHEDULE.T, device)
    out = fused.reverse_step(x, eps, t, SCHEDULE, noise=z, variance=variance, clip=clip)
    assert out.dtype == dtype and out.stride() == x.stride()
    ref = R.reverse_step(x.float(), eps.float(), t, SCHEDULE, noise=z.float(), variance=variance, clip=clip)
    ref_lowp = R.reverse_step(x, eps, t, SCHEDULE, noise=z, variance=variance, clip=clip)
    assert_close_fp(out, ref, dtype, ref_lowp)


@pytest.mark.parametrize("i", range(len(MULTI_TILE)), ids=lambda i: "x".join(map(str, MULTI_TILE[i])))
@pytest.mark.parametrize("channels_last", [False, True])
def test_multi_tile_addressed_noise_matches_reference(impl, device, i, channels_last):
    # Past the first tile, with the noise drawn in-kernel; variance and clipping cycle
    # over the shapes rather than multiply them.
    shape = MULTI_TILE[i]
    variance, clip = (("large", False), ("small", True), ("none", True))[i % 3]
    x, eps, _ = _inputs(shape, torch.float32, device, channels_last, seed=i)
    t = timesteps(shape[0], SCHEDULE.T, device)
    seeds = torch.tensor([3, -(2**50)][: shape[0]], device=device)
    out = fused.reverse_step(x, eps, t, SCHEDULE, seeds=seeds, variance=variance, clip=clip)
    z = addressed_noise(shape, seeds, t, K.STREAM_REVERSE, device)
    torch.testing.assert_close(out, R.reverse_step(x, eps, t, SCHEDULE, noise=z, variance=variance, clip=clip))


@pytest.mark.parametrize("ops", OPS, ids=ops_id)
def test_seeds_mean_the_materialised_noise_and_batch_invariance(impl, device, ops):
    x, eps, _ = _inputs((4, 3, 17, 19), torch.float32, device, True)
    t = timesteps(4, SCHEDULE.T, device)
    seeds = torch.tensor([0, 12345, -1, 2**40], device=device)
    z = K.randn(x.shape, seeds, t, K.STREAM_REVERSE)
    a = ops.reverse_step(x, eps, t, SCHEDULE, seeds=seeds, variance="small")
    torch.testing.assert_close(a, ops.reverse_step(x, eps, t, SCHEDULE, noise=z, variance="small"), rtol=0, atol=0)
    tail = ops.reverse_step(x[1:], eps[1:], t[1:], SCHEDULE, seeds=seeds[1:], variance="small")
    torch.testing.assert_close(a[1:], tail, rtol=0, atol=0)


def test_short_cosine_schedule_every_timestep(impl, device):
    # A whole short schedule: every row of the table is used, 0 and T-1 included.
    sched = Schedule.cosine(T=16)
    shape = (16, 3, 5, 6)
    x, eps, z = _inputs(shape, torch.float32, device, False)
    _, out2c, _ = _inputs(shape, torch.float32, device, False, learned=True)
    t = torch.arange(16, device=device)
    for variance in K.VARIANCES:
        eps = out2c if variance == "learned" else eps[:, :3]
        for clip in (False, True):
            out = fused.reverse_step(x, eps, t, sched, noise=z, variance=variance, clip=clip)
            torch.testing.assert_close(out, R.reverse_step(x, eps, t, sched, noise=z, variance=variance, clip=clip))


@pytest.mark.parametrize("ops", OPS, ids=ops_id)
def test_no_noise_at_index_zero(impl, device, ops):
    x, eps, z = _inputs((2, 3, 8, 8), torch.float32, device, False)
    t = torch.zeros(2, dtype=torch.long, device=device)
    a = ops.reverse_step(x, eps, t, SCHEDULE, noise=z)
    b = ops.reverse_step(x, eps, t, SCHEDULE, noise=torch.zeros_like(z))
    c = ops.reverse_step(x, eps, t, SCHEDULE, seeds=123)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_in_place_and_second_output(impl, device, channels_last):
    x, eps, _ = _inputs((3, 3, 33, 35), torch.float32, device, channels_last)
    eps = eps.to(torch.bfloat16)  # a bf16 model's output
    t = timesteps(3, SCHEDULE.T, device)
    table = SCHEDULE.table("small", device)
    expected = K.reverse_step(x, eps, t, table, seeds=9)
    # the next U-Net input: bf16, channels-last whatever x's layout
    lowp = torch.empty_like(x, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    ptr = x.data_ptr()
    y = K.reverse_step(x, eps, t, table, seeds=9, out=x, out_lowp=lowp)
    assert y is x and x.data_ptr() == ptr
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    torch.testing.assert_close(lowp, expected.to(torch.bfloat16), rtol=0, atol=0)
