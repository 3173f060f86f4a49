"""The fast path with the reference path's signatures: the fused kernels, given a Schedule
or a Plan instead of a coefficient table, so that tests, benchmarks and the Trainer pick
`fastddpm.fused` or `fastddpm.reference` and call the same functions:

    q_sample(x0, t, schedule, *, seeds=None, noise=None)
    reverse_step(x, eps_hat, t, schedule, *, seeds=None, noise=None, variance="large", clip=False)
    eps_mse_loss(eps_hat, t, *, seeds=None, noise=None, weights=None, reduction="mean")
    diffusion_loss(out, t, schedule, *, x0=None, seeds=None, noise=None, weights=None, prediction="epsilon", reduction="mean")
    sampler_step(x, eps_hat, k, plan, *, seeds=None, noise=None, h=None[, eps_uncond]) -> (x_s, x̂_0 / the ring, or None)
        (the fused step also takes eps_uncond=: guidance combined in the kernel; the reference
        is handed the combined output instead)
"""

import torch

from .. import kernels as K
from .plan import Plan
from .schedule import Schedule


def _schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a fastddpm.Schedule (for a coefficient table, call fastddpm.kernels directly), "
                        f"got {type(schedule).__name__}")
    return schedule


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, *, seeds=None, noise=None) -> torch.Tensor:
    return K.q_sample(x0, t, _schedule(schedule).table(device=x0.device), seeds=seeds, noise=noise)


def reverse_step(x, eps_hat, t, schedule: Schedule, *, seeds=None, noise=None, variance="large", clip=False) -> torch.Tensor:
    """variance="learned": eps_hat is a learned-Σ model's whole output (B, 2C, H, W), ε̂ then v."""
    return K.reverse_step(x, eps_hat, t, _schedule(schedule).table(variance, x.device), seeds=seeds, noise=noise, clip=clip,
                          learned=True if variance == "learned" else None)


def eps_mse_loss(eps_hat, t, *, seeds=None, noise=None, weights=None, reduction="mean") -> torch.Tensor:
    return K.eps_mse_loss(eps_hat, t, seeds=seeds, noise=noise, weights=weights, reduction=reduction)


def diffusion_loss(out, t, schedule: Schedule, *, x0=None, seeds=None, noise=None, weights=None, prediction="epsilon",
                   reduction="mean") -> torch.Tensor:
    """The loss of a model predicting ε, v or x_0 (x0: the clean images, read by the v and x_0 targets)."""
    pred = K.prediction_name(prediction)
    table = _schedule(schedule).table("large", out.device) if pred == "v" else None
    return K.eps_mse_loss(out, t, seeds=seeds, noise=noise, weights=weights, reduction=reduction, prediction=pred,
                          x0=x0 if pred != "epsilon" else None, table=table)


def sampler_step(x, eps_hat, k, plan: Plan, *, seeds=None, noise=None, h=None, eps_uncond=None, learned=None) -> tuple:
    """Step k of plan. h: a one-slot plan's previous x̂_0 (like x; this step's x̂_0 is returned,
    h is not changed), or the plan's whole history ring (plan.history, B, C, H, W), which the
    step turns in place (returned as the second value). learned: as kernels.sampler_step (a
    learned-Σ model's whole output; True by default for a plan with variance="learned")."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a fastddpm.Plan (Plan.build(schedule, method, ...)), got {type(plan).__name__}")
    if learned is None and plan.method.variance == "learned":
        learned = True
    plan.check_history(h)
    if not plan.stochastic:
        seeds = noise = None  # σ = 0 throughout: nothing to draw
    one_slot = h is not None and h.dim() == 4
    x0 = torch.empty_like(x, dtype=torch.float32) if one_slot else None
    x_s = K.sampler_step(x, eps_hat, k, plan.table(x.device), plan.timesteps_on(x.device), seeds=seeds, noise=noise,
                         h=h, out_h=x0, clip=plan.method.clip, eps_term=plan.eps_term, eps_uncond=eps_uncond, basis=plan.basis,
                         learned=learned)
    return x_s, (x0 if one_slot else h)
