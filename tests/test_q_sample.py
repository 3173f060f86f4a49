"""Forward noising: every implementation against the reference, explicit and addressed noise."""

import pytest
import torch
from helpers import DTYPES, SCHEDULE, SHAPES, addressed_noise, assert_close_fp, rand_image, timesteps, triton_backend

from fastddpm import kernels as K
from fastddpm import reference as R


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_explicit_noise_matches_reference(impl, device, shape, dtype, channels_last):
    x0 = rand_image(shape, dtype, device, 1, channels_last)
    noise = rand_image(shape, dtype, device, 2, channels_last)
    t = timesteps(shape[0], SCHEDULE.T, device)
    out = K.q_sample(x0, t, SCHEDULE.table(device=device), noise=noise)
    assert out.dtype == dtype and out.stride() == x0.stride()  # dtype and layout kept
    ref = R.q_sample(x0.float(), t, SCHEDULE, noise.float())
    ref_lowp = R.q_sample(x0, t, SCHEDULE, noise)
    assert_close_fp(out, ref, dtype, ref_lowp)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_addressed_noise_matches_reference_fed_that_noise(impl, device, shape, channels_last):
    x0 = rand_image(shape, torch.float32, device, 3, channels_last)
    t = timesteps(shape[0], SCHEDULE.T, device)
    seeds = torch.tensor([7, -3, 2**40 + 5, 11][: shape[0]], device=device)
    out = K.q_sample(x0, t, SCHEDULE.table(device=device), seeds=seeds)
    eps = addressed_noise(shape, seeds, t, K.STREAM_NOISING, device)
    torch.testing.assert_close(out, R.q_sample(x0, t, SCHEDULE, eps))


def test_mixed_layouts_and_int32_timesteps(impl, device):
    x0 = rand_image((3, 3, 17, 19), torch.float32, device, 4, channels_last=True)
    noise = rand_image((3, 3, 17, 19), torch.bfloat16, device, 5, channels_last=False)
    t = timesteps(3, SCHEDULE.T, device).int()
    out = K.q_sample(x0, t, SCHEDULE.table(device=device), noise=noise)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, R.q_sample(x0, t, SCHEDULE, noise.float()))


def test_gradients_match_reference(impl, device):
    shape = (3, 3, 5, 7)
    x0 = rand_image(shape, torch.float32, device, 6).requires_grad_()
    noise = rand_image(shape, torch.float32, device, 7).requires_grad_()
    t = timesteps(3, SCHEDULE.T, device)
    up = rand_image(shape, torch.float32, device, 8)
    gx, gn = torch.autograd.grad((K.q_sample(x0, t, SCHEDULE.table(device=device), noise=noise) * up).sum(), (x0, noise))
    rx, rn = torch.autograd.grad((R.q_sample(x0, t, SCHEDULE, noise) * up).sum(), (x0, noise))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gn, rn)


def test_out_of_range_timestep_in_kernel_gives_nan_not_garbage(device):
    # The host check stops this in eager code; compiled or graphed code skips it, and
    # then the kernel answers NaN rather than read outside the table.
    x0 = rand_image((2, 3, 4, 4), torch.float32, device, 9)
    t = torch.tensor([5, 1000], device=device)
    with triton_backend(device):
        out = torch.ops.fastddpm.q_sample(x0, t, SCHEDULE.table(device=device), None, x0, 0)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
