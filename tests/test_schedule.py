"""Schedules: the identities of the seed notation, diffusers' tables, bad input."""

import math

import pytest
import torch

from fastddpm import Schedule
from fastddpm.kernels import tables


@pytest.mark.parametrize("sched", [Schedule.linear(), Schedule.cosine(), Schedule.linear(T=10, beta_start=0.01, beta_end=0.3)])
def test_identities_in_seed_notation(sched):
    for name in ("alpha", "beta", "alpha_bar", "beta_bar", "betas", "alphas", "alphas_cumprod"):
        v = getattr(sched, name)
        assert v.dtype == torch.float64 and v.shape == (sched.T,), name
    one = torch.ones(sched.T, dtype=torch.float64)
    torch.testing.assert_close(sched.alpha**2 + sched.beta**2, one)  # α_t² + β_t² = 1
    torch.testing.assert_close(sched.alpha_bar**2 + sched.beta_bar**2, one)  # β̄_t = √(1 - ᾱ_t²)
    torch.testing.assert_close(sched.alpha_bar, torch.cumprod(sched.alpha, 0))  # ᾱ_t = α_0 ⋯ α_t
    torch.testing.assert_close(sched.beta**2, sched.betas)  # the notation table of docs/notation.md
    torch.testing.assert_close(sched.alpha_bar**2, sched.alphas_cumprod)


def test_linear_endpoints_are_variances():
    s = Schedule.linear()
    assert s.T == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alpha_bar[-1].item() < 0.01  # x_T is almost pure noise
    assert s.beta_bar[0].item() == pytest.approx(0.01)  # β̄_0 = √β_0


def test_cosine_follows_nichol_dhariwal():
    s = Schedule.cosine(T=1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):  # ᾱ_t² = f(t+1)/f(0) with index 0 the source's t = 1
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert s.betas.max().item() <= 0.999


def test_table_columns_against_the_schedule():
    s = Schedule.linear(T=50)
    c = {name: int(getattr(tables, name))
         for name in ("SQRT_AB", "SQRT_1M_AB", "X0_X", "X0_EPS", "C_X0", "C_X", "C_EPS", "C_H1", "SIGMA", "GUIDE", "C_H2",
                      "C_H3", "E_X", "E_M", "LV_MIN", "LV_MAX")}
    assert sorted(c.values()) == list(range(tables.NCOEF))  # every column named once
    for variance in ("large", "small", "none"):
        tab = s.table(variance).double()
        assert tab.shape == (50, tables.NCOEF)
        t = torch.arange(1, 50)
        close = dict(rtol=2e-7, atol=1e-7)  # float32 storage of float64 values
        torch.testing.assert_close(tab[:, c["SQRT_AB"]], s.alpha_bar, **close)
        torch.testing.assert_close(tab[:, c["SQRT_1M_AB"]], s.beta_bar, **close)
        torch.testing.assert_close(tab[:, c["X0_X"]], 1 / s.alpha_bar, **close)
        torch.testing.assert_close(tab[:, c["X0_EPS"]], s.beta_bar / s.alpha_bar, **close)
        assert (tab[:, c["GUIDE"]] == 1).all()  # unguided: the model's output as it is
        # the posterior mean (Ho et al. eq. 7) in the seed notation, with ᾱ_{-1} = 1, β̄_{-1} = 0
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), s.alpha_bar[:-1]])
        bb_prev = torch.cat([torch.zeros(1, dtype=torch.float64), s.beta_bar[:-1]])
        torch.testing.assert_close(tab[:, c["C_X0"]], ab_prev * s.beta**2 / s.beta_bar**2, **close)
        torch.testing.assert_close(tab[:, c["C_X"]], s.alpha * bb_prev**2 / s.beta_bar**2, **close)
        assert (tab[:, c["C_EPS"]] == 0).all() and all((tab[:, c[h]] == 0).all() for h in ("C_H1", "C_H2", "C_H3"))
        assert (tab[:, c["E_X"]] == 0).all() and (tab[:, c["E_M"]] == 1).all()  # an ε model's ε̂ is its output
        sigma = {"large": s.beta[t], "small": s.beta[t] * s.beta_bar[t - 1] / s.beta_bar[t], "none": 0 * s.beta[t]}
        torch.testing.assert_close(tab[1:, c["SIGMA"]], sigma[variance], **close)
        assert tab[0, c["SIGMA"]].item() == 0.0  # no noise at the last reverse step
        assert (tab[:, c["LV_MIN"]] == 0).all() and (tab[:, c["LV_MAX"]] == 0).all()  # no learned range
    # learned Σ (Nichol & Dhariwal eq. 15): log β_t and the clipped log β̃_t, σ's own weight 1 (0 at the end)
    tab = s.table("learned").double()
    t = torch.arange(1, 50)
    post = s.beta**2 * torch.cat([torch.zeros(1, dtype=torch.float64), s.beta_bar[:-1] ** 2]) / s.beta_bar**2
    torch.testing.assert_close(tab[:, c["LV_MAX"]], (s.beta**2).log(), rtol=2e-7, atol=1e-6)
    torch.testing.assert_close(tab[1:, c["LV_MIN"]], post[t].log(), rtol=2e-7, atol=1e-6)
    assert tab[0, c["LV_MIN"]].item() == pytest.approx(post[1].log().item(), rel=1e-6)  # OpenAI's clip: β̃_0 := β̃_1
    assert (tab[1:, c["SIGMA"]] == 1).all() and tab[0, c["SIGMA"]].item() == 0.0
    assert s.table("small") is s.table("small")  # cached


def test_unclipped_posterior_form_is_ho_eq_11():
    # The kernels write every DDPM mean as C_X0 x̂_0 + C_X x_t; without clipping that is
    # Ho et al. eq. 11, (x_t - β_t²/β̄_t ε̂)/α_t, coefficient by coefficient.
    s = Schedule.cosine(T=100)
    tab = s.table("large").double()
    cx0, cx = tab[:, int(tables.C_X0)], tab[:, int(tables.C_X)]
    x0x, x0e = tab[:, int(tables.X0_X)], tab[:, int(tables.X0_EPS)]
    torch.testing.assert_close(cx0 * x0x + cx, 1 / s.alpha, rtol=1e-6, atol=0)  # weight of x_t
    torch.testing.assert_close(cx0 * x0e, s.beta**2 / (s.alpha * s.beta_bar), rtol=1e-6, atol=0)  # weight of ε̂


def test_bad_input():
    with pytest.raises(ValueError, match="T: expected a positive int"):
        Schedule.linear(T=0)
    with pytest.raises(ValueError, match="beta_start, beta_end"):
        Schedule.linear(beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match=r"betas: expected every variance in \(0, 1\)"):
        Schedule.from_betas([0.1, 1.0, 0.2])  # 1 is allowed last only: zero terminal SNR
    with pytest.raises(ValueError, match=r"betas: expected every variance in \(0, 1\)"):
        Schedule.from_betas([0.1, 1.5])
    assert Schedule.from_betas([0.1, 1.0]).zero_terminal_snr
    with pytest.raises(ValueError, match="betas: expected a 1-D"):
        Schedule.from_betas(torch.ones(2, 2) * 0.1)
    with pytest.raises(ValueError, match="betas: expected a float64 CPU tensor"):
        Schedule(torch.ones(3) * 0.1)
    with pytest.raises(TypeError, match="betas: expected a torch.Tensor"):
        Schedule([0.1])
