"""Fewer-step samplers: whole chains against diffusers' schedulers with the exact noise fed in
(the reference in float64, the fused Sampler per dtype on both CPU backends), the order of
convergence on data whose ε̂ is known in closed form, the default DDPM chain pinned, and
bad input."""

import itertools
import math
import types

import pytest
import torch
from helpers import DEFAULT_TOL, half_ulp, tiny_unet, triton_backend

from fastddpm import Plan, Sampler, Schedule
from fastddpm import kernels as K
from fastddpm import reference as R
from fastddpm.core.plan import Method, timesteps

diffusers = pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_ddpm as ddpm_module  # noqa: E402
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module  # noqa: E402

S = Schedule.linear()
SHAPE = (3, 6, 5)
SEEDS = torch.tensor([3, 11])
STEPS = (1, 2, 3, 10, 50)
with K.cpu_backend("torch"):
    PRIOR_MAX = K.randn((2, *SHAPE), SEEDS, torch.zeros(2, dtype=torch.int64), K.STREAM_PRIOR).abs().max().item()
SPACINGS = ("trailing", "leading", "linspace")  # diffusers' three; "quad" is checked against the reference
CONFIGS = [  # (method, options): each variance/η/clip variant diffusers offers
    ("ddpm", dict(variance="large")), ("ddpm", dict(variance="small")),
    ("ddpm", dict(variance="large", clip=True)), ("ddpm", dict(variance="small", clip=True)),
    ("ddim", dict()), ("ddim", dict(eta=1.0)), ("ddim", dict(clip=True)), ("ddim", dict(eta=0.5, clip=True, clipped_eps=True)),
    ("dpm++2m", dict()), ("sde-dpm++2m", dict()),
]


def config_id(c):
    method, o = c
    return method + "".join(f"-{k}={v}" for k, v in o.items())


def toy_model(x, t):
    """A denoiser-like ε-model (any dtype): the exact ε̂ of Gaussian data N(0.3, 0.5²) plus a
    smooth, channel-mixing, t-dependent nonlinearity, so every coefficient of a step matters
    (a model far from any data's optimum turns a 50-step chain chaotic, and then two fp32
    chains differ by their rounding amplified, not by their arithmetic)."""
    a = S.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, 1, 1, 1)
    w = torch.tensor([[0.6, -0.3, 0.2], [0.1, 0.5, -0.4], [-0.2, 0.3, 0.7]], dtype=x.dtype, device=x.device)
    gauss = (1 - a).sqrt() * (x - a.sqrt() * 0.3) / (a * 0.25 + 1 - a)
    return gauss + 0.1 * torch.tanh(torch.einsum("oc,bchw->bohw", w, x)) * torch.cos(t.to(x.dtype) / 300).view(-1, 1, 1, 1)


class _Float32MeansFloat64(types.ModuleType):
    """diffusers' DPMSolverMultistepScheduler casts the sample to float32 in step(); to compare
    formulas rather than roundings its module sees torch.float32 as float64 during the test."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def follows_diffusers(method: str, spacing: str, steps: int) -> bool:
    """diffusers' DDIM steps from t to t - T // N, not to its own next timestep; the two agree
    where its grid is uniform (leading; trailing with N dividing T). See plan.py."""
    return not (method == "ddim" and (spacing == "linspace" or (spacing == "trailing" and S.T % steps)))


DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}


def diffusers_chain(method, spacing, steps, seeds, monkeypatch, variance="large", clip=False, eta=0.0, clipped_eps=False, *,
                    schedule=S, prediction="epsilon", model=toy_model):
    """diffusers' own scheduler loop in float64 on our schedule, with our prior and our noise:
    its prediction_type, Karras σ ("karras": use_karras_sigmas) and zero terminal SNR (where
    its DPMSolverMultistepScheduler takes ᾱ²_{T-1} = 2**-24) as asked."""
    karras = spacing == "karras"
    a = schedule.alphas_cumprod.clone()
    common = dict(num_train_timesteps=schedule.T, timestep_spacing="linspace" if karras else spacing,  # (karras: ignored)
                  prediction_type=DIFFUSERS_PREDICTION[prediction])
    if method == "ddpm":
        sc = diffusers.DDPMScheduler(**common, variance_type="fixed_" + variance, clip_sample=clip)
    elif method == "ddim":
        sc = diffusers.DDIMScheduler(**common, clip_sample=clip)
    else:
        sc = diffusers.DPMSolverMultistepScheduler(**common, solver_order=2, use_karras_sigmas=karras,
                                                   algorithm_type="dpmsolver++" if method == "dpm++2m" else "sde-dpmsolver++")
        monkeypatch.setattr(dpm_module, "torch", _Float32MeansFloat64("torch"))
        if schedule.zero_terminal_snr:
            a[-1] = 2.0**-24  # what its rescale_betas_zero_snr does
    sc.betas, sc.alphas, sc.alphas_cumprod = schedule.betas.clone(), schedule.alphas.clone(), a  # our float64 tables
    sc.one = sc.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sc.alpha_t, sc.sigma_t = a.sqrt(), (1 - a).sqrt()
    sc.lambda_t = sc.alpha_t.log() - sc.sigma_t.log()
    sc.set_timesteps(steps)
    if karras:  # its own Karras grid, in float64 (set_timesteps stores it in float32)
        sig = sc._convert_to_karras(in_sigmas=((1 - a) / a).sqrt().flip(0).numpy(), num_inference_steps=steps)
        sc.sigmas = torch.cat([torch.as_tensor(sig, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    elif method not in ("ddpm", "ddim"):  # set_timesteps stores its sigmas in float32: the same values in float64
        sc.sigmas = torch.cat([((1 - a) / a).sqrt()[sc.timesteps.long()], torch.zeros(1, dtype=torch.float64)])
    B = seeds.numel()
    x = K.randn((B, *SHAPE), seeds, torch.zeros(B, dtype=torch.int64), K.STREAM_PRIOR).double()
    ts = [int(v) for v in sc.timesteps]
    for i, t in enumerate(ts):
        tt = torch.full((B,), t)
        out = model(x, tt)
        z = K.randn(x.shape, seeds, tt, K.STREAM_REVERSE).double()
        if method == "ddpm":
            # diffusers adds noise at its last step whenever that step's t > 0 (trailing spacing),
            # with the variance β' itself for fixed_large; fastddpm ends every chain with the mean,
            # as Ho et al. and improved-diffusion do. Its last draw is fed zeros to compare the rest.
            last = torch.zeros_like(z) if i == len(ts) - 1 else z
            monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *args, _z=last, **kw: _z)
            x = sc.step(out, t, x).prev_sample
        elif method == "ddim":
            x = sc.step(out, t, x, eta=eta, use_clipped_model_output=clipped_eps, variance_noise=z if eta > 0 else None).prev_sample
        else:
            x = sc.step(out, t, x, variance_noise=z).prev_sample
    monkeypatch.undo()
    return x


def assert_chain_close(fast, exact, plain, steps: int):
    """flash-attention's rule over a whole chain: the fast path's error against the float64
    chain is at most twice that of the plain reference run in the fast path's model dtype,
    plus one half ulp of the fp32 state per step, at the state's scale (each step rounds
    terms of that size into an fp32 state: where the plain chain's roundings happened to
    cancel, that much is the storage's, not the kernel's arithmetic)."""
    err = (fast.double().cpu() - exact).abs()
    plain_err = (plain.double() - exact).abs().max().item()
    scale = max(exact.abs().max().item(), PRIOR_MAX)  # the chain passes through the prior's values
    floor = steps * half_ulp(torch.tensor(scale), torch.float32).item()
    excess = (err - 2 * plain_err - floor).max().item()
    assert excess <= 0, f"chain error {err.max().item():.3g} exceeds 2 x plain error {plain_err:.3g} by {excess:.3g}"


# ------------------------------------------------------------------ against diffusers


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm++2m"])
def test_timesteps_are_diffusers_grids(method):
    cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler, "dpm++2m": diffusers.DPMSolverMultistepScheduler}[method]
    for spacing, steps in itertools.product(SPACINGS, (1, 2, 3, 7, 10, 50, 999)):
        sc = cls(num_train_timesteps=1000, timestep_spacing=spacing)
        sc.set_timesteps(steps)
        assert timesteps(1000, Method(method, steps, spacing).checked(1000)) == [int(v) for v in sc.timesteps], (spacing, steps)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_reference_chains_equal_diffusers(config, spacing, monkeypatch):
    method, options = config
    for steps in STEPS:
        if not follows_diffusers(method, spacing, steps):
            continue
        ref = R.sample(toy_model, S, SEEDS, SHAPE, method, steps=steps, spacing=spacing, dtype=torch.float64, **options)
        theirs = diffusers_chain(method, spacing, steps, SEEDS, monkeypatch, **options)
        torch.testing.assert_close(ref, theirs, **DEFAULT_TOL[torch.float64], msg=lambda m: f"{steps} steps: {m}")


def test_ddim_differs_from_diffusers_only_by_its_previous_timestep(monkeypatch):
    # Where diffusers' DDIM grid is not uniform it steps t -> t - T // N; the reference
    # ddim_step taken to those same timesteps reproduces diffusers exactly.
    for spacing, steps in (("linspace", 10), ("trailing", 3), ("trailing", 7)):
        ts = timesteps(S.T, Method("ddim", steps, spacing).checked(S.T))
        x = K.randn((2, *SHAPE), SEEDS, torch.zeros(2, dtype=torch.int64), K.STREAM_PRIOR).double()
        for t in ts:
            tt = torch.full((2,), t)
            x, _ = R.ddim_step(x, toy_model(x, tt), tt, tt - S.T // steps, S, torch.zeros_like(x))
        torch.testing.assert_close(x, diffusers_chain("ddim", spacing, steps, SEEDS, monkeypatch))
        ours = R.sample(toy_model, S, SEEDS, SHAPE, "ddim", steps=steps, spacing=spacing, dtype=torch.float64)
        assert (ours - x).abs().max() > 1e-4  # and the consistent chain is a different one (f64 noise: 1e-12)


def check_fused_chain(config, spacing, steps_list, dtypes_at, monkeypatch, device=torch.device("cpu")):
    method, options = config
    for steps in steps_list:
        if spacing == "quad" and steps == 50:
            continue  # int(linspace(0, √800, 50)²) repeats timesteps: refused, tested below
        if spacing == "quad" or not follows_diffusers(method, spacing, steps):
            exact = R.sample(toy_model, S, SEEDS, SHAPE, method, steps=steps, spacing=spacing, dtype=torch.float64, **options)
        else:
            exact = diffusers_chain(method, spacing, steps, SEEDS, monkeypatch, **options)
        for dtype in dtypes_at(steps):  # the model's dtype; the state stays fp32 in the fused path
            fast = Sampler(toy_model, S, method=method, steps=steps, spacing=spacing, dtype=dtype, shape=SHAPE,
                           device=device, progress=False, **options).run(seeds=SEEDS)
            plain = R.sample(toy_model, S, SEEDS, SHAPE, method, steps=steps, spacing=spacing, dtype=dtype, **options)
            assert_chain_close(fast, exact, plain, steps)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("spacing", SPACINGS + ("quad",))
def test_fused_chains_equal_diffusers_torch_twin(config, spacing, monkeypatch):
    # Every method x variant x spacing x step count, through the torch twin of the kernel;
    # the model in fp32 throughout, and in bf16 at 10 steps.
    with K.cpu_backend("torch"):
        check_fused_chain(config, spacing, STEPS, lambda n: (torch.float32, torch.bfloat16) if n == 10 else (torch.float32,),
                          monkeypatch)


ALL_SPACINGS = SPACINGS + ("quad",)


@pytest.mark.parametrize("i", range(len(CONFIGS)), ids=lambda i: f"{config_id(CONFIGS[i])}-{ALL_SPACINGS[i % 4]}")
def test_fused_chains_equal_diffusers_triton(device, i, monkeypatch):
    # The Triton kernel itself (interpreted on a CPU, compiled on a GPU), once per method and
    # variant (which is what selects the kernel's compile-time variant: clipping, noise,
    # history); the spacings only change the host-side rows, so they cycle over the variants.
    with triton_backend(device):
        check_fused_chain(CONFIGS[i], ALL_SPACINGS[i % 4], (1, 3, 10),
                          lambda n: (torch.float32, torch.bfloat16) if n == 3 else (torch.float32,), monkeypatch, device)


# ------------------------------------------------------------------ convergence

MU, SD = 0.3, 0.5  # data N(MU, SD²) per pixel: its ε̂ and its probability-flow ODE in closed form


def gaussian_eps(x, t):
    a = S.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, 1, 1, 1)
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD**2 + 1 - a)


def exact_flow(x, a0, a1):
    """The probability-flow ODE from noise level a0 to a1: it keeps the standardised value."""
    return a1.sqrt() * MU + ((a1 * SD**2 + 1 - a1) / (a0 * SD**2 + 1 - a0)).sqrt() * (x - a0.sqrt() * MU)


def ode_errors(method, steps_list, fused: bool):
    """Max error at t = 99 (where every trailing grid here lands before its last step) against
    the exact flow. The last step jumps to x̂_0 (diffusers' final_sigmas_type="zero"), an
    error of order σ²(t_last) ~ 1/N that would mask any solver's order: it is left out."""
    seeds = torch.arange(8)
    xT = K.randn((8, 1, 8, 8), seeds, torch.zeros(8, dtype=torch.int64), K.STREAM_PRIOR).double()
    a = S.alphas_cumprod
    errs = []
    for n in steps_list:
        plan = Plan.build(S, method, steps=n)
        k = plan.prev.index(99) + 1
        if fused:
            got = Sampler(gaussian_eps, S, method=method, steps=n, shape=(1, 8, 8), progress=False).run(seeds=seeds, stop_after=k)
        else:
            got = R.sample(gaussian_eps, S, seeds, (1, 8, 8), method, steps=n, dtype=torch.float64, stop_after=k)
        errs.append((got.double() - exact_flow(xT, a[plan.timesteps[0]], a[99])).abs().max().item())
    return errs


def orders(errs, steps_list):
    return [math.log(errs[i] / errs[i + 1]) / math.log(steps_list[i + 1] / steps_list[i]) for i in range(len(errs) - 1)]


@pytest.mark.parametrize("fused", [False, True], ids=["reference-f64", "fused-f32"])
def test_ddim_converges_at_first_order(fused):
    errs = ode_errors("ddim", (20, 40, 80), fused)
    for p in orders(errs, (20, 40, 80)):
        assert 0.85 < p < 1.15, (errs, p)


def test_dpm_solver_2m_converges_at_second_order():
    # Asymptotically second order; below about 100 steps its first-order first step and
    # its second-order terms have opposite signs and the error falls faster than h².
    errs = ode_errors("dpm++2m", (250, 500, 1000), fused=False)
    for p in orders(errs, (250, 500, 1000)):
        assert 1.6 < p < 2.4, (errs, p)


def test_fused_dpm_solver_2m_is_far_more_accurate_than_ddim():
    # In fp32 the fused 2M reaches the rounding floor before its asymptotic order shows:
    # at equal model evaluations its ODE error is more than 10x smaller than DDIM's (18x at
    # 20 steps, 100x at 40, over 1000x at 80).
    steps = (20, 40, 80)
    for e2, e1 in zip(ode_errors("dpm++2m", steps, fused=True), ode_errors("ddim", steps, fused=True)):
        assert e2 < e1 / 10, (e2, e1)


# ------------------------------------------------------------------ the default path, pinned

PINNED = {  # Sampler(net, T=12 schedule, variance, clip).run(batch=3, seed=11) before the samplers landed
    ("large", False): ([3.497388, -2.253078, -1.43782, 1.897257], -53.22561),
    ("large", True): ([0.679156, -0.877721, -0.398819, 0.773826], -28.6926),
    ("small", False): ([3.640872, -2.255165, -1.666783, 1.62669], -51.70232),
    ("small", True): ([0.929059, -0.98348, -0.623827, 0.795786], -31.43256),
}
PINNED_T1000 = ([-0.784565, -0.100137], 9.01768)  # variance large, seeds 5, 6, the first 4 of 1000 steps


@pytest.fixture(scope="module")
def net():
    return tiny_unet()


@pytest.mark.parametrize("variance,clip", list(PINNED))
def test_default_ddpm_path_is_unchanged(net, variance, clip):
    # The values this sampler gave before the fewer-step samplers and the cheaper normal: the
    # noise addresses are the same, so only rounding may move them (4e-5 of values of order 1).
    x = Sampler(net, Schedule.linear(T=12, beta_start=1e-3, beta_end=0.2), variance=variance, clip=clip,
                progress=False).run(batch=3, seed=11)
    values, total = PINNED[(variance, clip)]
    got = [float(x[i]) for i in [(0, 0, 0, 0), (1, 2, 3, 4), (2, 1, 7, 7), (0, 2, 5, 1)]]
    assert got == pytest.approx(values, abs=4e-5)
    assert float(x.double().sum()) == pytest.approx(total, abs=1e-3)
    x = Sampler(net, progress=False).run(batch=2, seed=5, stop_after=4)
    assert [float(x[0, 0, 0, 0]), float(x[1, 2, 3, 4])] == pytest.approx(PINNED_T1000[0], abs=4e-5)
    assert float(x.double().sum()) == pytest.approx(PINNED_T1000[1], abs=1e-3)


# ------------------------------------------------------------------ bad input


def test_bad_sampler_options_are_clear_errors_before_any_work():
    calls = []

    def model(x, t):
        calls.append(1)
        return x

    def make(**kw):
        return Sampler(model, S, shape=SHAPE, progress=False, **kw)

    for kw, match in (
        (dict(method="euler"), "method: expected one of"),
        (dict(method="ddim", spacing="uniform"), "spacing: expected one of"),
        (dict(method="ddim", spacing="karras"), "spacing: 'karras' is a multistep solver's grid, Karras .* not 'ddim'"),
        (dict(method="ddim", steps=0), r"steps: expected an int in \[1, 1000\]"),
        (dict(method="ddim", steps=1001), r"steps: expected an int in \[1, 1000\]"),
        (dict(method="ddim", steps=2.5), "steps: expected an int"),
        (dict(method="ddim", eta=-0.1), "eta: expected a finite number >= 0"),
        (dict(method="ddim", eta=float("nan")), "eta: expected a finite number >= 0"),
        (dict(method="dpm++2m", eta=1.0), "eta: only ddim takes"),
        (dict(method="ddim", variance="small"), "variance: only ddpm takes a variance"),
        (dict(method="dpm++2m", clip=True), "clip: only ddpm and ddim"),
        (dict(method="ddim", clipped_eps=True), "clipped_eps: only ddim with clip=True"),
        (dict(method="ddim", clip="yes"), "clip: expected True or False"),
        (dict(method="ddim", steps=50, spacing="quad"), "spacing: 'quad' with steps=50 .* repeated"),
        (dict(method="dpm++2m", steps=1000, spacing="leading"), "spacing: 'leading' with steps=1000"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            make(**kw)
    with pytest.raises(ValueError, match=r"steps: expected an int in \[1, 10\]"):
        Sampler(model, Schedule.linear(T=10), method="ddim", steps=20, shape=SHAPE)  # a schedule too short
    assert not calls  # nothing ran


def test_history_is_for_multistep_solvers_only(impl):
    x = torch.randn(2, *SHAPE)
    k = torch.zeros(2, dtype=torch.int64)
    ddim, dpm = Plan.build(S, "ddim", steps=5), Plan.build(S, "dpm++2m", steps=5)
    from fastddpm import fused

    for ops in (fused, R):
        with pytest.raises(ValueError, match="h: ddim is history-free"):
            ops.sampler_step(x, x, k, ddim, h=torch.zeros_like(x))
        with pytest.raises(ValueError, match="h: dpm\\+\\+2m is a multistep solver"):
            ops.sampler_step(x, x, k, dpm)
        x_s, x0 = ops.sampler_step(x, toy_model(x, k), k, dpm, h=torch.zeros_like(x))
        assert x0 is not None and x_s.shape == x.shape
