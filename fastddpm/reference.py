"""The reference path: DDPM written straight from the equations, eager PyTorch.

It is the oracle every fast path is tested against and the baseline every benchmark
compares with, so it has no cleverness: coefficients come from the schedule's float64
tables, noise is an explicit tensor, every step is one line citing its equation.
Arithmetic happens in the inputs' dtype (pass float32/float64 for an accurate result,
bf16/fp16 to measure what plain low-precision PyTorch would get).
"""

import torch

from .schedule import Schedule

VARIANCES = ("large", "small", "none")


def _per_sample(schedule: Schedule, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # the (T,) float64 table `name` at each sample's t -> (B, 1, 1, 1) in like's dtype
    return schedule.on(name, like.device)[t.to(like.device).long()].to(like.dtype).view(-1, 1, 1, 1)


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """x_t = ᾱ_t x_0 + β̄_t ε                                   (Ho et al. eq. 4)."""
    return _per_sample(schedule, "alpha_bar", t, x0) * x0 + _per_sample(schedule, "beta_bar", t, x0) * noise


def reverse_step(
    x: torch.Tensor,
    eps_hat: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor,
    variance: str = "large",
    clip: bool = False,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} with ε-prediction (DESIGN §1)."""
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    t = t.long()
    tp = (t - 1).clamp(min=0)
    first = (t == 0).view(-1, 1, 1, 1)
    # 1. coefficients of step t, and of t-1 with ᾱ_{-1} = 1, β̄_{-1} = 0
    alpha = _per_sample(schedule, "alpha", t, x)
    beta = _per_sample(schedule, "beta", t, x)
    abar = _per_sample(schedule, "alpha_bar", t, x)
    bbar = _per_sample(schedule, "beta_bar", t, x)
    abar_prev = torch.where(first, torch.ones_like(abar), _per_sample(schedule, "alpha_bar", tp, x))
    bbar_prev = torch.where(first, torch.zeros_like(bbar), _per_sample(schedule, "beta_bar", tp, x))
    if clip:
        # 2a. predicted x_0, clipped                           (Ho et al. eq. 15)
        x0 = ((x - bbar * eps_hat) / abar).clamp(-1.0, 1.0)
        # 3a. posterior mean of q(x_{t-1} | x_t, x_0)          (Ho et al. eq. 7)
        mean = (abar_prev * beta**2 / bbar**2) * x0 + (alpha * bbar_prev**2 / bbar**2) * x
    else:
        # 2b. mean from ε̂ directly                             (Ho et al. eq. 11)
        mean = (x - (beta**2 / bbar) * eps_hat) / alpha
    # 4. σ_t: large = β_t, small = posterior β_t β̄_{t-1}/β̄_t, none = 0; no noise at t = 0
    if variance == "large":
        sigma = beta
    elif variance == "small":
        sigma = beta * bbar_prev / bbar
    else:
        sigma = torch.zeros_like(beta)
    sigma = torch.where(first, torch.zeros_like(sigma), sigma)
    # 5. x_{t-1} = μ + σ_t z                                    (Ho et al. Algorithm 2)
    return mean + sigma * noise


def eps_mse_loss(
    eps_hat: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor = None,
    weights: torch.Tensor = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """w_t ‖ε - ε̂‖² averaged over (C, H, W), then over the batch (Ho et al. eq. 14)."""
    per_sample = ((eps_hat - noise) ** 2).mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)[t.long()]
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


@torch.no_grad()
def sample(
    model,
    schedule: Schedule,
    seeds: torch.Tensor,
    shape: tuple,
    variance: str = "large",
    clip: bool = False,
    steps: int = None,
) -> torch.Tensor:
    """Ancestral sampling, eager fp32, one reference step at a time (Ho et al. Algorithm 2).

    Same seeds contract as fastddpm.Sampler: image k starts from the prior addressed by
    (seeds[k], STREAM_PRIOR, 0) and step t adds z addressed by (seeds[k], STREAM_REVERSE, t),
    both materialised here by fastddpm.kernels.randn. steps: only the first `steps`
    reverse steps (default all T), returning x_{T-steps}.
    """
    from . import kernels as K
    from .sampler import model_output

    B, T = seeds.numel(), schedule.T
    dev = seeds.device
    zeros = torch.zeros(B, dtype=torch.int64, device=dev)
    x = K.randn((B, *shape), seeds, zeros, K.STREAM_PRIOR)  # x_T ~ N(0, I)
    for i in range(T - 1, T - 1 - (T if steps is None else steps), -1):
        t = torch.full((B,), i, dtype=torch.int64, device=dev)
        eps_hat = model_output(model(x, t)).float()
        z = K.randn((B, *shape), seeds, t, K.STREAM_REVERSE)
        x = reverse_step(x, eps_hat, t, schedule, z, variance, clip)
    return x
