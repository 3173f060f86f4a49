"""ε-MSE loss: value and gradient of the fused kernel against the reference, one-tile and
multi-tile shapes; the contract both paths share; gradcheck."""

import pytest
import torch
from helpers import CASES, SCHEDULE, addressed_noise, case_id, half_ulp, ops_id, rand_image, timesteps

from fastddpm import fused
from fastddpm import kernels as K
from fastddpm import reference as R

OPS = [fused, R]


def _weights(T, device):
    return torch.linspace(0.5, 2.0, T, dtype=torch.float32, device=device)  # min-SNR-like ramp


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_value_and_grad_match_reference_with_explicit_noise(impl, device, case, channels_last, weighted):
    shape, dtype = case
    eps_hat = rand_image(shape, dtype, device, 1, channels_last).requires_grad_()
    noise = rand_image(shape, dtype, device, 2, channels_last)
    t = timesteps(shape[0], SCHEDULE.T, device)
    w = _weights(SCHEDULE.T, device) if weighted else None
    loss = fused.eps_mse_loss(eps_hat, t, noise=noise, weights=w)
    (grad,) = torch.autograd.grad(loss, eps_hat)
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.stride() == eps_hat.stride()
    # reference: fp32 arithmetic on the same stored values (the kernel computes in fp32)
    e32 = eps_hat.detach().float().requires_grad_()
    ref = R.eps_mse_loss(e32, t, noise=noise.float(), weights=w)
    (ref_grad,) = torch.autograd.grad(ref, e32)
    torch.testing.assert_close(loss, ref)
    if dtype == torch.float32:
        torch.testing.assert_close(grad, ref_grad)
    else:  # the fp32 gradient rounded once to the storage dtype: within one ulp of it
        assert ((grad.float() - ref_grad).abs() <= 2 * half_ulp(ref_grad, dtype)).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 3, 17, 19), (2, 5, 40, 30)], ids=["one-tile", "multi-tile"])
def test_addressed_noise_is_the_noise_q_sample_drew(impl, device, reduction, channels_last, shape):
    B = shape[0]
    x0 = rand_image(shape, torch.float32, device, 3, channels_last)
    t = timesteps(B, SCHEDULE.T, device)
    seeds = torch.tensor([5, 6, 2**33][:B], device=device)
    x_t = fused.q_sample(x0, t, SCHEDULE, seeds=seeds)
    # a "model" whose prediction depends on x_t, so the loss is not trivial
    eps_hat = (0.5 * x_t).detach().requires_grad_()
    w = _weights(SCHEDULE.T, device)
    loss = fused.eps_mse_loss(eps_hat, t, seeds=seeds, weights=w, reduction=reduction)
    up = torch.linspace(0.5, 1.5, B, device=device) if reduction == "none" else torch.tensor(1.0, device=device)
    (grad,) = torch.autograd.grad(loss, eps_hat, grad_outputs=up)

    eps = addressed_noise(shape, seeds, t, K.STREAM_NOISING, device)
    torch.testing.assert_close(x_t, R.q_sample(x0, t, SCHEDULE, noise=eps))  # the same ε went in
    e_ref = eps_hat.detach().clone().requires_grad_()
    ref = R.eps_mse_loss(e_ref, t, noise=eps, weights=w, reduction=reduction)
    (ref_grad,) = torch.autograd.grad(ref, e_ref, grad_outputs=up)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("ops", OPS, ids=ops_id)
def test_loss_regenerates_the_noising_noise(impl, device, ops):
    # Through either path: a perfect model (ε̂ = the ε that q_sample drew) has zero loss.
    x0 = rand_image((2, 3, 33, 35), torch.float32, device, 4)
    t = timesteps(2, SCHEDULE.T, device)
    x_t = ops.q_sample(x0, t, SCHEDULE, seeds=7)
    a = SCHEDULE.alpha_bar[t.cpu()].float().to(device).view(-1, 1, 1, 1)
    b = SCHEDULE.beta_bar[t.cpu()].float().to(device).view(-1, 1, 1, 1)
    perfect = (x_t - a * x0) / b
    loss = ops.eps_mse_loss(perfect, t, seeds=7, reduction="none")
    assert loss.shape == (2,) and loss.dtype == torch.float32
    assert (loss < 1e-8).all(), loss
    assert (ops.eps_mse_loss(perfect, t, seeds=8, reduction="none") > 1.5).all()  # another seed: another ε


def test_loss_is_bitwise_reproducible(impl, device):
    eps_hat = rand_image((4, 3, 32, 32), torch.float32, device, 4)
    t = timesteps(4, SCHEDULE.T, device)
    a = K.eps_mse_loss(eps_hat, t, seeds=1)
    b = K.eps_mse_loss(eps_hat, t, seeds=1)
    assert torch.equal(a, b)


def test_noise_gradient_when_noise_requires_grad(impl, device):
    eps_hat = rand_image((2, 3, 4, 5), torch.float32, device, 5).requires_grad_()
    noise = rand_image((2, 3, 4, 5), torch.float32, device, 6).requires_grad_()
    t = timesteps(2, SCHEDULE.T, device)
    ge, gn = torch.autograd.grad(K.eps_mse_loss(eps_hat, t, noise=noise), (eps_hat, noise))
    torch.testing.assert_close(gn, -ge)


def test_noise_gradient_of_a_v_target_when_noise_requires_grad(impl, device):
    # v = ᾱ_t ε − β̄_t x_0 holds the explicit ε with weight ᾱ_t: its gradient is −ᾱ_t ∂L/∂m, as
    # autograd through the formula says (it was None before: a gradient silently missing)
    shape = (3, 3, 4, 5)
    out = rand_image(shape, torch.float32, device, 5).requires_grad_()
    noise = rand_image(shape, torch.float32, device, 6).requires_grad_()
    x0 = rand_image(shape, torch.float32, device, 7)
    t = timesteps(3, SCHEDULE.T, device)
    table = SCHEDULE.table(device=device)
    loss = K.eps_mse_loss(out, t, noise=noise, prediction="v", x0=x0, table=table, reduction="sum")
    go, gn = torch.autograd.grad(loss, (out, noise))
    o, n = out.detach().clone().requires_grad_(), noise.detach().clone().requires_grad_()
    a = SCHEDULE.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    target = a.sqrt().float() * n - (1 - a).sqrt().float() * x0
    ref = ((o - target) ** 2).mean(dim=(1, 2, 3)).sum()
    ro, rn = torch.autograd.grad(ref, (o, n))
    torch.testing.assert_close(go, ro, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(gn, rn, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("source", ["seeds", "noise"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64_cpu(source, reduction):
    # the torch twin in float64 (the interpreted Triton kernels are fp32 only)
    g = torch.Generator().manual_seed(0)
    eps_hat = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    noise = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 999])
    w = _weights(SCHEDULE.T, "cpu")
    kw = dict(seeds=torch.tensor([3, 4])) if source == "seeds" else dict(noise=noise)
    with K.cpu_backend("torch"):
        assert torch.autograd.gradcheck(
            lambda e: K.eps_mse_loss(e, t, weights=w, reduction=reduction, **kw), (eps_hat,)
        )
        x0 = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
        table = SCHEDULE.table()
        assert torch.autograd.gradcheck(lambda x: K.q_sample(x, t, table, seeds=torch.tensor([3, 4])), (x0,))
