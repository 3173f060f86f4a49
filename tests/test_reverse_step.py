"""Reverse update: every implementation against the reference, every variance, clipping."""

import pytest
import torch
from helpers import DTYPES, SCHEDULE, SHAPES, addressed_noise, assert_close_fp, rand_image, timesteps

from fastddpm import Schedule
from fastddpm import kernels as K
from fastddpm import reference as R

VARIANCES = ("large", "small", "none")


def _inputs(shape, dtype, device, channels_last, seed=0):
    # x_t at the scale of a mid-schedule sample; ε̂ like a model's output. Scale 2 makes
    # clipping of x̂_0 active for a good fraction of elements.
    x = rand_image(shape, dtype, device, seed + 1, channels_last, scale=2.0)
    eps = rand_image(shape, dtype, device, seed + 2, channels_last)
    z = rand_image(shape, dtype, device, seed + 3, channels_last)
    return x, eps, z


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("clip", [False, True])
def test_explicit_noise_matches_reference(impl, device, shape, dtype, channels_last, variance, clip):
    x, eps, z = _inputs(shape, dtype, device, channels_last)
    t = timesteps(shape[0], SCHEDULE.T, device)
    out = K.reverse_step(x, eps, t, SCHEDULE.table(variance, device), noise=z, clip=clip)
    assert out.dtype == dtype and out.stride() == x.stride()
    ref = R.reverse_step(x.float(), eps.float(), t, SCHEDULE, z.float(), variance, clip)
    ref_lowp = R.reverse_step(x, eps, t, SCHEDULE, z, variance, clip)
    assert_close_fp(out, ref, dtype, ref_lowp)


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_addressed_noise_matches_reference_fed_that_noise(impl, device, variance, clip, channels_last):
    shape = (3, 3, 17, 19)
    x, eps, _ = _inputs(shape, torch.float32, device, channels_last)
    t = timesteps(3, SCHEDULE.T, device)
    seeds = torch.tensor([0, 12345, -1], device=device)
    out = K.reverse_step(x, eps, t, SCHEDULE.table(variance, device), seeds=seeds, clip=clip)
    z = addressed_noise(shape, seeds, t, K.STREAM_REVERSE, device)
    torch.testing.assert_close(out, R.reverse_step(x, eps, t, SCHEDULE, z, variance, clip))


def test_short_cosine_schedule_every_timestep(impl, device):
    # A whole short schedule: every row of the table is used, 0 and T-1 included.
    sched = Schedule.cosine(T=16)
    shape = (16, 3, 5, 6)
    x, eps, z = _inputs(shape, torch.float32, device, False)
    t = torch.arange(16, device=device)
    for variance in VARIANCES:
        for clip in (False, True):
            out = K.reverse_step(x, eps, t, sched.table(variance, device), noise=z, clip=clip)
            torch.testing.assert_close(out, R.reverse_step(x, eps, t, sched, z, variance, clip))


def test_no_noise_at_index_zero(impl, device):
    x, eps, z = _inputs((2, 3, 8, 8), torch.float32, device, False)
    t = torch.zeros(2, dtype=torch.long, device=device)
    table = SCHEDULE.table("large", device)
    a = K.reverse_step(x, eps, t, table, noise=z)
    b = K.reverse_step(x, eps, t, table, noise=torch.zeros_like(z))
    c = K.reverse_step(x, eps, t, table, seeds=123)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_in_place_and_second_output(impl, device, channels_last):
    x, eps, _ = _inputs((3, 3, 17, 19), torch.float32, device, channels_last)
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
