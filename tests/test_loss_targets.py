"""The v and x₀ losses: the fused kernel (target built in-kernel from the addressed ε and x₀)
against autograd through the explicit formulas, per dtype, one- and multi-tile, both CPU
backends; min-SNR-γ weights against diffusers' training scripts; the drop-in for a diffusers
loop's get_velocity target; bad input."""

import pytest
import torch
from helpers import CASES, SCHEDULE, addressed_noise, case_id, half_ulp, rand_image, timesteps

from fastddpm import Schedule, fused
from fastddpm import kernels as K
from fastddpm import reference as R


def explicit_target(prediction, x0, eps, t, schedule):
    """Salimans & Ho (2022) §4: v = √ᾱ ε − √(1−ᾱ) x_0, float64 coefficients."""
    a = schedule.alphas_cumprod.to(x0.device)[t.long()].view(-1, 1, 1, 1)
    return {"epsilon": eps, "sample": x0, "v": a.sqrt().float() * eps - (1 - a).sqrt().float() * x0}[prediction]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("prediction", ["v", "sample"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_value_and_grad_equal_autograd_through_the_formula(impl, device, case, prediction, channels_last):
    shape, dtype = case
    B = shape[0]
    out = rand_image(shape, dtype, device, 1, channels_last).requires_grad_()
    x0 = rand_image(shape, dtype, device, 2, not channels_last)  # another layout than the output: both are read as laid out
    t = timesteps(B, SCHEDULE.T, device)
    seeds = torch.arange(B, device=device) * 3 + 1
    w = torch.linspace(0.5, 2.0, SCHEDULE.T, dtype=torch.float32, device=device)
    loss = fused.diffusion_loss(out, t, SCHEDULE, x0=x0, seeds=seeds, weights=w, prediction=prediction)
    (grad,) = torch.autograd.grad(loss, out)
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.stride() == out.stride()
    # the formula, in fp32 on the same stored values, through autograd
    eps = addressed_noise(shape, seeds, t, K.STREAM_NOISING, device).float()
    o32 = out.detach().float().requires_grad_()
    target = explicit_target(prediction, x0.float(), eps, t, SCHEDULE)
    ref = (w[t] * ((o32 - target) ** 2).mean(dim=(1, 2, 3))).mean()
    (ref_grad,) = torch.autograd.grad(ref, o32)
    torch.testing.assert_close(loss, ref, rtol=2e-6, atol=1e-6)
    if dtype == torch.float32:
        torch.testing.assert_close(grad, ref_grad, rtol=2e-6, atol=1e-9)
    else:  # the fp32 gradient rounded once to the storage dtype
        assert ((grad.float() - ref_grad).abs() <= 2 * half_ulp(ref_grad, dtype) + 1e-9).all()


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_and_reference_paths_agree(impl, device, prediction, reduction):
    shape = (3, 5, 40, 30)  # multi-tile, odd channels
    x0 = rand_image(shape, torch.float32, device, 3)
    t = timesteps(3, SCHEDULE.T, device)
    seeds = torch.tensor([5, 6, 2**33], device=device)
    out = (0.3 * fused.q_sample(x0, t, SCHEDULE, seeds=seeds)).detach()
    kw = dict(x0=None if prediction == "epsilon" else x0, seeds=seeds, prediction=prediction, reduction=reduction)
    a, b = out.clone().requires_grad_(), out.clone().requires_grad_()
    up = torch.linspace(0.5, 1.5, 3, device=device) if reduction == "none" else torch.tensor(1.0, device=device)
    la, lb = fused.diffusion_loss(a, t, SCHEDULE, **kw), R.diffusion_loss(b, t, SCHEDULE, **kw)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(*[torch.autograd.grad(l, v, grad_outputs=up)[0] for l, v in ((la, a), (lb, b))])


def test_a_perfect_v_model_has_zero_loss_as_diffusers_get_velocity_says(impl, device):
    # the drop-in for a diffusers training loop: add_noise -> q_sample, get_velocity -> the kernel's own target
    diffusers = pytest.importorskip("diffusers")
    sc = diffusers.DDPMScheduler(num_train_timesteps=SCHEDULE.T, prediction_type="v_prediction")
    x0 = rand_image((4, 3, 17, 19), torch.float32, device, 5)
    t = timesteps(4, SCHEDULE.T, device)
    seeds = torch.arange(4, device=device)
    table = K.coef_table(sc.alphas_cumprod, device=device)
    eps = addressed_noise(x0.shape, seeds, t, K.STREAM_NOISING, device).contiguous()  # a channel-group slice
    v = sc.get_velocity(x0.cpu(), eps.cpu(), t.cpu()).to(device).contiguous()  # diffusers returns a strided view
    loss = K.eps_mse_loss(v, t, seeds=seeds, prediction="v_prediction", x0=x0, table=table, reduction="none")
    assert (loss < 1e-10).all(), loss
    wrong = K.eps_mse_loss(eps, t, seeds=seeds, prediction="v", x0=x0, table=table, reduction="none")
    assert (wrong[1:] > 1e-2).all()  # t[0] = 0, where v = √ᾱ ε − β̄ x_0 is ε to 1e-2


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_min_snr_weights_are_diffusers_training_scripts(prediction):
    # diffusers' examples: mse_loss_weights = min(snr, γ) [/ snr for ε, / (snr + 1) for v]
    ac = SCHEDULE.alphas_cumprod
    snr = ac / (1 - ac)
    w = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    w = {"epsilon": w / snr, "v": w / (snr + 1), "sample": w}[prediction]
    torch.testing.assert_close(K.min_snr_weights(ac, 5.0, prediction), w.float())
    z = Schedule.linear().rescale_zero_snr().alphas_cumprod
    if prediction == "epsilon":
        with pytest.raises(ValueError, match="prediction: min-SNR weights for an ε target are undefined"):
            K.min_snr_weights(z, 5.0, prediction)
    else:
        assert torch.isfinite(K.min_snr_weights(z, 5.0, prediction)).all()


@pytest.mark.parametrize("call, match", [
    (lambda o, t, x: K.eps_mse_loss(o, t, seeds=[0, 1], prediction="v", x0=x), "table: prediction='v' needs"),
    (lambda o, t, x: K.eps_mse_loss(o, t, seeds=[0, 1], prediction="v", table=K.coef_table(SCHEDULE.alphas_cumprod)), "x0:"),
    (lambda o, t, x: K.eps_mse_loss(o, t, seeds=[0, 1], x0=x), "x0, table: an ε target reads neither"),
    (lambda o, t, x: K.eps_mse_loss(o, t, seeds=[0, 1], prediction="x0", x0=x), "prediction: expected one of"),
    (lambda o, t, x: K.eps_mse_loss(o, t, prediction="sample", x0=x[:1]), "x0: expected shape"),
    (lambda o, t, x: K.eps_mse_loss(o, t, noise=o, prediction="sample", x0=x), "noise: an x_0 target has no ε"),
    (lambda o, t, x: K.min_snr_weights(SCHEDULE.alphas_cumprod, 0.0), "gamma: expected a finite number > 0"),
    (lambda o, t, x: K.min_snr_weights(SCHEDULE.alphas_cumprod, float("nan")), "gamma: expected a finite number > 0"),
])
def test_bad_input(call, match):
    o, x = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=match):
        call(o, torch.tensor([0, 1]), x)
