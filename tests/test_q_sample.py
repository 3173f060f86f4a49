"""Forward noising: the fused kernel against the reference, one-tile and multi-tile shapes,
both layouts, both CPU backends; and the contract both paths share, through one signature."""

import pytest
import torch
from helpers import CASES, SCHEDULE, addressed_noise, assert_close_fp, case_id, ops_id, rand_image, timesteps, triton_backend

from fastddpm import fused
from fastddpm import kernels as K
from fastddpm import reference as R

OPS = [fused, R]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("channels_last", [False, True])
def test_explicit_noise_matches_reference(impl, device, case, channels_last):
    shape, dtype = case
    x0 = rand_image(shape, dtype, device, 1, channels_last)
    noise = rand_image(shape, dtype, device, 2, channels_last)
    t = timesteps(shape[0], SCHEDULE.T, device)
    out = fused.q_sample(x0, t, SCHEDULE, noise=noise)
    assert out.dtype == dtype and out.stride() == x0.stride()  # dtype and layout kept
    ref = R.q_sample(x0.float(), t, SCHEDULE, noise=noise.float())
    ref_lowp = R.q_sample(x0, t, SCHEDULE, noise=noise)
    assert_close_fp(out, ref, dtype, ref_lowp)


@pytest.mark.parametrize("shape", [(3, 3, 17, 19), (2, 3, 33, 35), (1, 4, 64, 64), (2, 5, 40, 30)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_addressed_noise_matches_reference_fed_that_noise(impl, device, shape, channels_last):
    x0 = rand_image(shape, torch.float32, device, 3, channels_last)
    t = timesteps(shape[0], SCHEDULE.T, device)
    seeds = torch.tensor([7, -3, 2**40 + 5, 11][: shape[0]], device=device)
    out = fused.q_sample(x0, t, SCHEDULE, seeds=seeds)
    eps = addressed_noise(shape, seeds, t, K.STREAM_NOISING, device)
    torch.testing.assert_close(out, R.q_sample(x0, t, SCHEDULE, noise=eps))


@pytest.mark.parametrize("ops", OPS, ids=ops_id)
def test_seeds_mean_the_materialised_noise(impl, device, ops):
    # Both paths: seeds= is exactly noise= of the addressed draw (the fused kernel bitwise,
    # since the explicit fp32 noise is the very value it draws in registers).
    x0 = rand_image((2, 3, 33, 35), torch.float32, device, 4, channels_last=True)
    t = timesteps(2, SCHEDULE.T, device)
    seeds = torch.tensor([5, 2**62], device=device)
    eps = K.randn(x0.shape, seeds, t, K.STREAM_NOISING)
    torch.testing.assert_close(ops.q_sample(x0, t, SCHEDULE, seeds=seeds), ops.q_sample(x0, t, SCHEDULE, noise=eps),
                               rtol=0, atol=0)


@pytest.mark.parametrize("ops", OPS, ids=ops_id)
def test_batch_invariance_and_layout(impl, device, ops):
    shape = (4, 3, 20, 20)
    x0 = rand_image(shape, torch.bfloat16, device, 5)
    t = timesteps(4, SCHEDULE.T, device)
    full = ops.q_sample(x0, t, SCHEDULE, seeds=100)
    assert full.dtype == torch.bfloat16
    part = ops.q_sample(x0[2:], t[2:], SCHEDULE, seeds=102)  # int seed s means s, s+1, ...
    torch.testing.assert_close(full[2:], part, rtol=0, atol=0)
    cl = ops.q_sample(x0.contiguous(memory_format=torch.channels_last), t, SCHEDULE, seeds=100)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, full, rtol=0, atol=0)


def test_mixed_layouts_and_int32_timesteps(impl, device):
    x0 = rand_image((3, 3, 17, 19), torch.float32, device, 4, channels_last=True)
    noise = rand_image((3, 3, 17, 19), torch.bfloat16, device, 5, channels_last=False)
    t = timesteps(3, SCHEDULE.T, device).int()
    out = fused.q_sample(x0, t, SCHEDULE, noise=noise)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, R.q_sample(x0, t, SCHEDULE, noise=noise.float()))


@pytest.mark.parametrize("ops", OPS, ids=ops_id)
def test_gradients_match_reference(impl, device, ops):
    shape = (3, 3, 5, 7)
    x0 = rand_image(shape, torch.float32, device, 6).requires_grad_()
    noise = rand_image(shape, torch.float32, device, 7).requires_grad_()
    t = timesteps(3, SCHEDULE.T, device)
    up = rand_image(shape, torch.float32, device, 8)
    gx, gn = torch.autograd.grad((ops.q_sample(x0, t, SCHEDULE, noise=noise) * up).sum(), (x0, noise))
    a = SCHEDULE.alpha_bar[t.cpu()].float().to(device).view(-1, 1, 1, 1)  # ∂x_t/∂x_0 = ᾱ_t, ∂x_t/∂ε = β̄_t
    b = SCHEDULE.beta_bar[t.cpu()].float().to(device).view(-1, 1, 1, 1)
    torch.testing.assert_close(gx, a * up)
    torch.testing.assert_close(gn, b * up)


def test_out_of_range_timestep_in_kernel_gives_nan_not_garbage(device):
    # The host check stops this in eager code; compiled or graphed code skips it, and
    # then the kernel answers NaN rather than read outside the table.
    x0 = rand_image((2, 3, 4, 4), torch.float32, device, 9)
    t = torch.tensor([5, 1000], device=device)
    with triton_backend(device):
        out = torch.ops.fastddpm.q_sample(x0, t, SCHEDULE.table(device=device), None, x0, 0)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
