"""Per-timestep coefficient tables the kernels read, built once in float64.

The kernels take schedule knowledge as one float32 table of shape (T, NCOEF), indexed
by the timestep each sample carries, so any trainer with its own schedule can use them:
`coef_table(scheduler.alphas_cumprod)` is all a diffusers user needs.

Columns, in the seed notation of shared/DESIGN.md §1 (ᾱ_t² = alphas_cumprod[t],
α_t² = ᾱ_t² / ᾱ_{t-1}², β_t² = 1 - α_t², β̄_t² = 1 - ᾱ_t², ᾱ_{-1} = 1, β̄_{-1} = 0):
"""

import torch

SQRT_AB = 0  # ᾱ_t                     forward noising: x_t = ᾱ_t x_0 + β̄_t ε
SQRT_1M_AB = 1  # β̄_t
RECIP_ALPHA = 2  # 1 / α_t                  reverse: x_{t-1} = x_t/α_t - c ε̂ + σ_t z
EPS_COEF = 3  # β_t² / (α_t β̄_t)
SIGMA = 4  # σ_t, by variance; 0 at t = 0
RECIP_SQRT_AB = 5  # 1 / ᾱ_t                  clipped: x̂_0 = x_t/ᾱ_t - (β̄_t/ᾱ_t) ε̂
X0_EPS = 6  # β̄_t / ᾱ_t
POST_X0 = 7  # ᾱ_{t-1} β_t² / β̄_t²      posterior mean μ = a x̂_0 + b x_t
POST_XT = 8  # α_t β̄_{t-1}² / β̄_t²
NCOEF = 9

VARIANCES = ("large", "small", "none")


def coef_table(alphas_cumprod, variance: str = "large", device=None) -> torch.Tensor:
    """Build the (T, NCOEF) float32 table from ᾱ_t² (diffusers' `alphas_cumprod`).

    variance: "large" σ_t = β_t (diffusers fixed_large), "small" σ_t = β_t β̄_{t-1}/β̄_t
    (the posterior; fixed_small), "none" σ_t = 0. σ_0 = 0 for all three: the last
    reverse step adds no noise, by table rather than by a branch on the host.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    if ac.dim() != 1 or ac.numel() < 1:
        raise ValueError(f"alphas_cumprod: expected a 1-D tensor of length T >= 1, got shape {tuple(ac.shape)}")
    if not bool(torch.isfinite(ac).all()) or not bool(((ac > 0) & (ac < 1)).all()):
        raise ValueError("alphas_cumprod: expected every value in (0, 1)")
    if ac.numel() > 1 and not bool((ac[1:] <= ac[:-1]).all()):
        raise ValueError("alphas_cumprod: expected a non-increasing sequence")
    prev = torch.cat([ac.new_ones(1), ac[:-1]])  # ᾱ_{t-1}², with ᾱ_{-1}² = 1
    alpha2 = ac / prev  # α_t²
    beta2 = 1.0 - alpha2  # β_t²
    bbar2 = 1.0 - ac  # β̄_t²
    bbar2_prev = 1.0 - prev  # β̄_{t-1}², 0 at t = 0
    if variance == "large":
        sigma = beta2.sqrt()
    elif variance == "small":
        sigma = (beta2 * bbar2_prev / bbar2).sqrt()
    else:
        sigma = torch.zeros_like(ac)
    sigma[0] = 0.0
    cols = [None] * NCOEF
    cols[SQRT_AB] = ac.sqrt()
    cols[SQRT_1M_AB] = bbar2.sqrt()
    cols[RECIP_ALPHA] = alpha2.rsqrt()
    cols[EPS_COEF] = beta2 / (alpha2.sqrt() * bbar2.sqrt())
    cols[SIGMA] = sigma
    cols[RECIP_SQRT_AB] = ac.rsqrt()
    cols[X0_EPS] = (bbar2 / ac).sqrt()
    cols[POST_X0] = prev.sqrt() * beta2 / bbar2
    cols[POST_XT] = alpha2.sqrt() * bbar2_prev / bbar2
    return torch.stack(cols, dim=1).to(device=device, dtype=torch.float32).contiguous()
