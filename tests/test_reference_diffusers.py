"""The reference path against diffusers' DDPMScheduler, fed the same noise.

diffusers is a test extra (CI installs it); these are skipped only where it is absent.
"""

import pytest
import torch
from helpers import rand_image

from fastddpm import Schedule
from fastddpm import reference as R

diffusers = pytest.importorskip("diffusers")

# diffusers tabulates in float32 (its β_t = 1 - ᾱ_t/ᾱ_{t-1} loses ~4 digits to
# cancellation at small t), fastddpm in float64. To compare the formulas rather than the
# roundings, the step tests hand diffusers our float64 table and float64 inputs, so both
# compute in float64 and must agree to float64's default tolerance.
TOL32 = dict(rtol=1e-5, atol=1e-5)


def _scheduler(**kw):
    """A diffusers scheduler computing in float64 on fastddpm's linear schedule."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", **kw)
    ours = Schedule.linear()
    sched.betas = ours.betas.clone()
    sched.alphas = ours.alphas.clone()
    sched.alphas_cumprod = ours.alphas_cumprod.clone()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched, ours


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_schedules_match(beta_schedule):
    ours = Schedule.linear() if beta_schedule == "linear" else Schedule.cosine()
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, **TOL32)


def test_add_noise_matches():
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    # as shipped: float32 tables, float32 data
    theirs32 = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x0 = rand_image((6, 3, 8, 8), torch.float32, "cpu", 1)
    noise = rand_image((6, 3, 8, 8), torch.float32, "cpu", 2)
    torch.testing.assert_close(R.q_sample(x0, t, Schedule.linear(), noise=noise), theirs32.add_noise(x0, noise, t), **TOL32)
    # the formula, in float64
    sched, ours = _scheduler()
    x0, noise = x0.double(), noise.double()
    torch.testing.assert_close(R.q_sample(x0, t, ours, noise=noise), sched.add_noise(x0, noise, t))


@pytest.mark.parametrize("variance", ["large", "small"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_step_matches(variance, clip, t):
    sched, ours = _scheduler(variance_type="fixed_" + variance, clip_sample=clip)
    x = rand_image((2, 3, 8, 8), torch.float64, "cpu", 3, scale=2.0)
    eps_hat = rand_image((2, 3, 8, 8), torch.float64, "cpu", 4)
    # diffusers draws its noise with torch.randn from the generator: draw the same here
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    theirs = sched.step(eps_hat, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
    tt = torch.full((2,), t)
    torch.testing.assert_close(R.reverse_step(x, eps_hat, tt, ours, noise=z, variance=variance, clip=clip), theirs)
    if clip:  # clipping must actually bite somewhere for the test to mean anything
        x0_hat = (x - ours.beta_bar[t] * eps_hat) / ours.alpha_bar[t]
        assert (x0_hat.abs() > 1).any()


def test_variance_none_is_the_mean():
    s = Schedule.linear()
    x = rand_image((2, 3, 8, 8), torch.float32, "cpu", 5)
    eps_hat = rand_image((2, 3, 8, 8), torch.float32, "cpu", 6)
    z = rand_image((2, 3, 8, 8), torch.float32, "cpu", 7)
    t = torch.tensor([3, 700])
    torch.testing.assert_close(
        R.reverse_step(x, eps_hat, t, s, noise=z, variance="none"), R.reverse_step(x, eps_hat, t, s, noise=torch.zeros_like(z))
    )
