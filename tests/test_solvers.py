"""The higher-order solvers: DPM-Solver++(3M) (ODE and SDE), UniPC (bh1, bh2; orders 1-3;
corrector on and off) and iPNDM (orders 1-4), in the one step kernel with its history ring.

Whole chains in float64 against diffusers' DPMSolverMultistepScheduler(solver_order=3) and
UniPCMultistepScheduler fed the same model, prior and noise (ε, v and x₀ models, spacings,
Karras and logSNR grids, zero terminal SNR); the reference's unfolded solvers (UniPC's corrector
as its own update) against the fused step's folded rows, on both CPU backends, the model in fp32
and bf16, odd-channel and multi-tile shapes, guided; the order of each solver on Gaussian data
whose flow is known in closed form; diffusers scheduler configs; bad input."""

import math

import pytest
import torch
from helpers import assert_fp32_chain, chain_gains, triton_backend

from fastddpm import Plan, Sampler, Schedule, fused
from fastddpm import kernels as K
from fastddpm import reference as R
from fastddpm.core.plan import ORDERS, Method, timesteps
from fastddpm.kernels.tables import C_EPS, C_X, C_X0, HISTORY, X0_EPS, X0_X

diffusers = pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module  # noqa: E402
import diffusers.schedulers.scheduling_unipc_multistep as unipc_module  # noqa: E402
from test_parameterizations import toy_model  # noqa: E402
from test_samplers import DIFFUSERS_PREDICTION, _Float32MeansFloat64, exact_flow, gaussian_eps  # noqa: E402

LINEAR, ZSNR = Schedule.linear(), Schedule.linear().rescale_zero_snr()
SHAPE = (3, 6, 5)
SEEDS = torch.tensor([3, 11])
STEPS = (1, 2, 3, 4, 5, 10, 16)  # warm-up, warm-down (lower_order_final below 15 steps) and past it

UNIPC = [dict(order=o, solver_type=st, corrector=c) for o in (1, 2, 3) for st in ("bh1", "bh2") for c in (True, False)]
CONFIGS = [("dpm++3m", {}), ("sde-dpm++3m", {}), ("dpm++3m", dict(lower_order_final=False))] + [
    ("unipc", u) for u in UNIPC] + [("unipc", dict(order=3, lower_order_final=False)),
                                    ("unipc", dict(order=3, disable_corrector=(0, 2)))]


def config_id(c):
    return c[0] + "".join(f"-{k}={v}" for k, v in c[1].items())


def diffusers_solver_chain(method, steps, *, spacing="linspace", schedule=LINEAR, prediction="epsilon", model=None,
                           stop_before_last=False, **options):
    """diffusers' DPMSolverMultistepScheduler(solver_order=3) or UniPCMultistepScheduler loop, in
    float64 on our schedule, with our prior and our noise. stop_before_last: the state before
    its last step (UniPC bh1 and UniPC without lower_order_final are not finite after it)."""
    mp = pytest.MonkeyPatch()
    a = schedule.alphas_cumprod.clone()
    grid = spacing in ("karras", "logsnr")
    common = dict(num_train_timesteps=schedule.T, timestep_spacing="linspace" if grid else spacing,
                  prediction_type=DIFFUSERS_PREDICTION[prediction], use_karras_sigmas=spacing == "karras",
                  lower_order_final=options.get("lower_order_final", True))
    if method == "unipc":
        disable = list(range(steps)) if options.get("corrector") is False else list(options.get("disable_corrector", ()))
        sc = diffusers.UniPCMultistepScheduler(**common, solver_order=options.get("order", 2),
                                               solver_type=options.get("solver_type", "bh2"), disable_corrector=disable)
        mp.setattr(unipc_module, "torch", _Float32MeansFloat64("torch"))
    else:
        sc = diffusers.DPMSolverMultistepScheduler(**common, solver_order=3, use_lu_lambdas=spacing == "logsnr",
                                                   algorithm_type="sde-dpmsolver++" if method.startswith("sde") else "dpmsolver++")
        mp.setattr(dpm_module, "torch", _Float32MeansFloat64("torch"))
    if schedule.zero_terminal_snr:
        a[-1] = 2.0**-24  # what its rescale_betas_zero_snr does
    sc.betas, sc.alphas, sc.alphas_cumprod = schedule.betas.clone(), schedule.alphas.clone(), a
    sc.alpha_t, sc.sigma_t = a.sqrt(), (1 - a).sqrt()
    sc.lambda_t = sc.alpha_t.log() - sc.sigma_t.log()
    sc.set_timesteps(steps)
    sig = ((1 - a) / a).sqrt()
    if spacing == "karras":  # its own σ grid, in float64 (set_timesteps stores float32)
        s = torch.as_tensor(sc._convert_to_karras(in_sigmas=sig.flip(0).numpy(), num_inference_steps=steps), dtype=torch.float64)
    elif spacing == "logsnr":
        s = torch.as_tensor(sc._convert_to_lu(in_lambdas=sig.log().flip(0).numpy(), num_inference_steps=steps),
                            dtype=torch.float64).exp()
    else:
        s = sig[sc.timesteps.long()]
    sc.sigmas = torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    B = SEEDS.numel()
    x = K.randn((B, *SHAPE), SEEDS, torch.zeros(B, dtype=torch.int64), K.STREAM_PRIOR).double()
    ts = [int(v) for v in sc.timesteps]
    model = model or toy_model(prediction, schedule)
    for i, t in enumerate(ts):
        if stop_before_last and i == len(ts) - 1:
            break
        tt = torch.full((B,), t)
        z = K.randn(x.shape, SEEDS, tt, K.STREAM_REVERSE).double()
        x = sc.step(model(x, tt), t, x, **({} if method == "unipc" else {"variance_noise": z})).prev_sample
    mp.undo()
    return x, ts


def finite_in_diffusers(method, options) -> bool:
    """diffusers' last step is finite: not UniPC bh1 (B(h) = −∞ times its empty correction), not
    UniPC of order > 1 without lower_order_final (D_k / r_k with r_k = 0 into σ = 0)."""
    if method != "unipc":
        return True
    return options.get("solver_type", "bh2") != "bh1" and (options.get("lower_order_final", True) or options.get("order", 2) == 1)


def reference_chain(method, steps, *, schedule=LINEAR, prediction="epsilon", dtype=torch.float64, stop_after=None, **options):
    return R.sample(toy_model(prediction, schedule), schedule, SEEDS, SHAPE, method, steps=steps, dtype=dtype,
                    prediction=prediction, stop_after=stop_after, **options)


def check_against_diffusers(method, options, spacing="linspace", schedule=LINEAR, prediction="epsilon", steps_list=STEPS):
    for steps in steps_list:
        full = finite_in_diffusers(method, options)
        theirs, ts = diffusers_solver_chain(method, steps, spacing=spacing, schedule=schedule, prediction=prediction,
                                            stop_before_last=not full, **options)
        assert ts == list(Plan.build(schedule, method, steps=steps, spacing=spacing, prediction=prediction, **options).timesteps)
        ours = reference_chain(method, steps, schedule=schedule, prediction=prediction, spacing=spacing,
                               stop_after=None if full else steps - 1, **options)
        torch.testing.assert_close(ours, theirs, msg=lambda m: f"{steps} steps: {m}")


# ------------------------------------------------------------------ the reference against diffusers


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
def test_reference_chains_equal_diffusers(config, spacing):
    check_against_diffusers(*config, spacing=spacing)


@pytest.mark.parametrize("config", [("dpm++3m", {}), ("sde-dpm++3m", {}), ("unipc", dict(order=3)),
                                    ("unipc", dict(order=2, solver_type="bh1"))], ids=config_id)
@pytest.mark.parametrize("prediction", ["v", "sample"])
def test_reference_chains_equal_diffusers_for_v_and_x0_models(config, prediction):
    check_against_diffusers(*config, spacing="trailing", prediction=prediction, steps_list=(1, 3, 10))


@pytest.mark.parametrize("config", [("dpm++3m", {}), ("sde-dpm++3m", {}), ("unipc", dict(order=3))], ids=config_id)
def test_reference_chains_equal_diffusers_at_zero_terminal_snr(config):
    # a v model at ᾱ = 0 (Lin et al. 2024); the solver takes ᾱ² = 2**-24 there, as diffusers
    check_against_diffusers(*config, spacing="trailing", schedule=ZSNR, prediction="v", steps_list=(1, 3, 10))


@pytest.mark.parametrize("config", [("dpm++3m", {}), ("sde-dpm++3m", {}), ("unipc", dict(order=3)),
                                    ("unipc", dict(order=3, solver_type="bh1"))], ids=config_id)
def test_reference_chains_equal_diffusers_on_the_karras_grid(config):
    check_against_diffusers(*config, spacing="karras", steps_list=(1, 3, 10, 25))


@pytest.mark.parametrize("method", ["dpm++3m", "sde-dpm++3m"])
def test_logsnr_spacing_is_diffusers_use_lu_lambdas(method):
    for steps in (1, 2, 5, 10, 20) + ((50,) if method == "dpm++3m" else ()):  # (50 repeats a t: refused for the SDE)
        sc = diffusers.DPMSolverMultistepScheduler(use_lu_lambdas=True, solver_order=3)
        sc.alphas_cumprod = LINEAR.alphas_cumprod.clone()  # ours, float64: its float32 one moves a rounding tie at 50
        sc.set_timesteps(steps)
        assert timesteps(1000, Method(method, steps, "logsnr").checked(1000), LINEAR.alphas_cumprod) == \
            [int(v) for v in sc.timesteps], steps
    check_against_diffusers(method, {}, spacing="logsnr", steps_list=(1, 3, 10, 25))


def test_unipc_bh1_is_finite_where_diffusers_is_nan():
    # diffusers' UniPC bh1 multiplies its empty last correction by B(h) = h = −∞ (σ = 0 at the end):
    # NaN. The last step here is the limit, x̂_0 at the state it starts from: equal to diffusers'
    # chain up to that step, then exactly the data prediction there.
    for steps in (3, 10):
        kw = dict(order=3, solver_type="bh1", spacing="trailing")
        theirs_full, _ = diffusers_solver_chain("unipc", steps, **kw)
        assert torch.isnan(theirs_full).all()  # the failure this guards against, still in diffusers
        ours = reference_chain("unipc", steps, **kw)
        before = reference_chain("unipc", steps, stop_after=steps - 1, **kw)
        theirs_before, _ = diffusers_solver_chain("unipc", steps, stop_before_last=True, **kw)
        torch.testing.assert_close(before, theirs_before)
        plan = Plan.build(LINEAR, "unipc", steps=steps, order=3, solver_type="bh1")
        t = torch.full((2,), plan.timesteps[-1])
        model = toy_model("epsilon", LINEAR)
        a = LINEAR.alphas_cumprod[plan.timesteps[-1]]
        torch.testing.assert_close(ours, (before - (1 - a).sqrt() * model(before, t)) / a.sqrt(), rtol=1e-12, atol=1e-12)
        fast = Sampler(model, LINEAR, method="unipc", steps=steps, shape=SHAPE, progress=False, **kw)
        torch.testing.assert_close(fast.run(seeds=SEEDS).double(), ours, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the fused step against the reference

FUSED = [("dpm++3m", {}), ("sde-dpm++3m", {}), ("unipc", dict(order=3)), ("unipc", dict(order=3, solver_type="bh1")),
         ("unipc", dict(order=2, corrector=False)), ("unipc", dict(order=1)), ("ipndm", dict(order=4)), ("ipndm", {}),
         ("ipndm", dict(order=3, spacing="karras")), ("unipc", dict(order=3, spacing="logsnr"))]


@pytest.mark.parametrize("config", FUSED, ids=config_id)
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_fused_chains_equal_the_reference_torch_twin(config, prediction):
    method, options = config
    model = toy_model(prediction, LINEAR)
    for steps in (1, 3, 10, 25):
        exact = R.sample(model, LINEAR, SEEDS, SHAPE, method, steps=steps, dtype=torch.float64, prediction=prediction, **options)
        # bf16 at 10 steps; not on the Karras/logSNR grids, which reach t < 10, where this toy's own
        # ᾱ² rounds to 1 in bf16 and its ε = (x − α x̂_0)/σ divides by zero (the toy's, not the step's)
        low = steps == 10 and options.get("spacing") not in ("karras", "logsnr")
        for dtype in (torch.float32, torch.bfloat16) if low else (torch.float32,):
            plain = R.sample(model, LINEAR, SEEDS, SHAPE, method, steps=steps, dtype=dtype, prediction=prediction, **options)
            with K.cpu_backend("torch"):
                sampler = Sampler(model, LINEAR, method=method, steps=steps, dtype=dtype, shape=SHAPE, prediction=prediction,
                                  progress=False, **options)
                fast = sampler.run(seeds=SEEDS)
            assert_fp32_chain(fast, exact, plain, steps, gains=chain_gains(LINEAR, sampler.plan.timesteps))


class ChannelMixing:
    """An ε model for any channel count: the Gaussian's ε̂ plus a smooth term mixing channels."""

    def __call__(self, x, t):
        a = LINEAR.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, 1, 1, 1)
        gauss = (1 - a).sqrt() * (x - a.sqrt() * 0.3) / (a * 0.25 + 1 - a)
        return gauss + 0.1 * torch.tanh(x.flip(1)) * torch.cos(t.to(x.dtype) / 300).view(-1, 1, 1, 1)


# each kernel variant the solvers add: 2 and 3 history slots, the noise basis, the SDE's draw beside
# a ring, bf16 model input; odd channels (two channel groups) and several pixel tiles, NCHW and NHWC
KERNEL_CASES = [("dpm++3m", {}, (5, 7, 9), False, torch.float32), ("sde-dpm++3m", {}, (3, 33, 35), True, torch.float32),
                ("unipc", dict(order=3), (3, 33, 35), True, torch.bfloat16), ("ipndm", dict(order=4), (5, 7, 9), True, torch.float32),
                ("ipndm", dict(order=3), (1, 33, 35), False, torch.bfloat16)]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"{config_id(c[:2])}-{'x'.join(map(str, c[2]))}-"
                         f"{'nhwc' if c[3] else 'nchw'}-{str(c[4])[6:]}")
def test_fused_chains_equal_the_reference_triton(device, case):
    method, options, shape, channels_last, dtype = case
    model, seeds, steps = ChannelMixing(), torch.tensor([3, 11]), 4
    exact = R.sample(model, LINEAR, seeds, shape, method, steps=steps, dtype=torch.float64, **options)
    plain = R.sample(model, LINEAR, seeds, shape, method, steps=steps, dtype=dtype, **options)
    with triton_backend(device):
        fast = Sampler(model, LINEAR, method=method, steps=steps, shape=shape, dtype=dtype, channels_last=channels_last,
                       device=device, progress=False, **options).run(seeds=seeds.to(device))
    assert_fp32_chain(fast.cpu(), exact, plain, steps)


@pytest.mark.parametrize("method,options", [("dpm++3m", {}), ("unipc", dict(order=3)), ("ipndm", dict(order=4))])
def test_a_step_by_hand_turns_the_ring_itself(impl, device, method, options):
    # fused.sampler_step with the plan's ring, k the step index: the same chain as the Sampler
    model, steps = ChannelMixing(), 6
    plan = Plan.build(LINEAR, method, steps=steps, **options)
    x = K.randn((2, *SHAPE), SEEDS, torch.zeros(2, dtype=torch.int64), K.STREAM_PRIOR).to(device)
    ring = torch.zeros((plan.history, *x.shape), device=device)
    for i in range(steps):
        k = torch.full((2,), i, device=device)
        x, ring = fused.sampler_step(x, model(x, torch.full((2,), plan.timesteps[i], device=device)), k, plan, h=ring)
    exact = R.sample(model, LINEAR, SEEDS, SHAPE, method, steps=steps, dtype=torch.float64, **options)
    plain = R.sample(model, LINEAR, SEEDS, SHAPE, method, steps=steps, dtype=torch.float32, **options)
    assert_fp32_chain(x.cpu(), exact, plain, steps)


def test_guided_chains_equal_the_reference():
    from test_guidance import ToyConditional

    model, seeds, labels = ToyConditional(), torch.tensor([3, 11, 5]), torch.tensor([0, 3, 1])
    for method, options in (("dpm++3m", {}), ("unipc", dict(order=3)), ("ipndm", dict(order=4))):
        kw = dict(steps=10, guidance=3.0, guidance_interval=(100, 900), **options)
        exact = R.sample(model, LINEAR, seeds, (3, 5, 5), method, labels=labels, dtype=torch.float64, **kw)
        plain = R.sample(model, LINEAR, seeds, (3, 5, 5), method, labels=labels, dtype=torch.float32, **kw)
        fast = Sampler(model, LINEAR, method=method, shape=(3, 5, 5), progress=False, **kw).run(seeds=seeds, labels=labels)
        assert_fp32_chain(fast, exact, plain, steps=10)


def test_guided_chains_equal_diffusers_fed_the_guided_eps():
    from test_guidance import ToyConditional

    model, labels, w = ToyConditional(), torch.tensor([2, 0]), 4.0
    null = torch.full_like(labels, 4)

    def guided(x, t):
        return model(x, t, null) + w * (model(x, t, labels) - model(x, t, null))

    for method, options in (("dpm++3m", {}), ("unipc", dict(order=3))):
        ours = R.sample(model, LINEAR, SEEDS, SHAPE, method, labels=labels, steps=10, guidance=w, dtype=torch.float64,
                        spacing="trailing", **options)
        theirs, _ = diffusers_solver_chain(method, 10, spacing="trailing", model=guided, **options)
        torch.testing.assert_close(ours, theirs)


def test_unipc_without_corrector_at_order_2_is_dpm_solver_2m():
    # Zhao et al.: UniP-2 with B(h) = e^h − 1 is DPM-Solver++(2M): the same rows
    a = Plan.build(LINEAR, "unipc", steps=12, order=2, corrector=False).rows
    b = Plan.build(LINEAR, "dpm++2m", steps=12).rows
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ order on Gaussian data

def ode_errors(method, steps_list, **options):
    """Max error at t = 99 against the exact flow, before the last step (whose jump to x̂_0 is
    the model's, not the solver's, error): float64 reference and fp32 fused chains alike."""
    seeds = torch.arange(8)
    xT = K.randn((8, 1, 8, 8), seeds, torch.zeros(8, dtype=torch.int64), K.STREAM_PRIOR).double()
    a = LINEAR.alphas_cumprod
    errs = []
    for n in steps_list:
        plan = Plan.build(LINEAR, method, steps=n, **options)
        k = plan.prev.index(99) + 1
        got = R.sample(gaussian_eps, LINEAR, seeds, (1, 8, 8), method, steps=n, dtype=torch.float64, stop_after=k, **options)
        errs.append((got - exact_flow(xT, a[plan.timesteps[0]], a[99])).abs().max().item())
    return errs


def slopes(errs, steps_list):
    return [math.log(errs[i] / errs[i + 1]) / math.log(steps_list[i + 1] / steps_list[i]) for i in range(len(errs) - 1)]


@pytest.mark.parametrize("method,options,lo,hi", [
    # UniC-p raises UniP-p's order by one (Zhao et al., Theorem 3.1): 4 and 3
    ("unipc", dict(order=3), 3.8, 4.7), ("unipc", dict(order=2), 2.3, 3.3),  # (2: 2.35, 2.79, 2.86, towards 3)
    ("unipc", dict(order=3, corrector=False), 2.8, 3.3), ("unipc", dict(order=1, corrector=False), 0.85, 1.15),
    # 3M's own steps are third order, but its warm-up step is first order (a local error of h²
    # once, so h² globally): on this grid the slope falls from 2.5 towards 2
    ("dpm++3m", {}, 2.0, 2.7),
], ids=lambda v: config_id(v) if isinstance(v, tuple) else str(v))
def test_global_order_on_the_gaussian_flow(method, options, lo, hi):
    steps = (40, 80, 160, 320)  # trailing grids through t = 99; errors from 1e-3 down to 1e-7, far above float64's
    errs = ode_errors(method, steps, **options)
    for p in slopes(errs, steps):
        assert lo < p < hi, (errs, p)


def sigma_uniform_schedule(T=1000, smax=80.0) -> Schedule:
    """σ̃_t = σ/α = smax (t + 1)/T: the trailing grid is uniform in iPNDM's time σ̃ (EDM's σ)."""
    s = smax * (torch.arange(T, dtype=torch.float64) + 1) / T
    a = 1 / (1 + s**2)
    return Schedule.from_betas(1 - a / torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]]))


@pytest.mark.parametrize("method,options,order", [("ipndm", dict(order=o), o) for o in (1, 2, 3, 4)] + [
    ("dpm++2m", {}, 2), ("dpm++3m", {}, 2)], ids=lambda v: config_id(v) if isinstance(v, tuple) else str(v))
def test_local_order_of_one_step_from_the_exact_history(method, options, order):
    # One step's row (float64) from the exact state at t = 499 with the exact earlier outputs in
    # the ring: its error is the local truncation error, h^(order + 1). iPNDM's fixed
    # Adams-Bashforth weights assume equal steps in σ̃: shown on a schedule whose grid is.
    # DPM-Solver++(3M) as diffusers (and Lu et al.'s code) write it weighs D2 = h² x̂_0''/2 by
    # (e^{-h} − 1 + h)/h² − ½, half what the Taylor term needs: its local error is h³, a
    # second-order method (doubling that weight gives h⁴; fastddpm keeps diffusers' rows).
    S = sigma_uniform_schedule() if method == "ipndm" else LINEAR
    seeds = torch.arange(4)
    xT = K.randn((4, 1, 4, 4), seeds, torch.zeros(4, dtype=torch.int64), K.STREAM_PRIOR).double()
    a = S.alphas_cumprod

    def eps(x, t):
        at = a[t].view(-1, 1, 1, 1)
        return (1 - at).sqrt() * (x - at.sqrt() * 0.3) / (at * 0.25 + 1 - at)

    errs, steps = [], (50, 100, 200, 500)  # N dividing T: trailing steps of exactly T/N
    for n in steps:
        plan = Plan.build(S, method, steps=n, **options)
        k = n // 2  # the step from t = 499 on every one of these trailing grids
        assert plan.timesteps[k] == 499
        state = lambda j: exact_flow(xT, a[plan.timesteps[0]], a[plan.timesteps[j]])  # noqa: E731
        ring = torch.zeros((max(plan.history, 1), *xT.shape), dtype=torch.float64)
        for j in range(1, plan.history + 1):
            t = plan.timesteps[k - j]
            x_j, e_j = state(k - j), eps(state(k - j), torch.full((4,), t))
            ring[(k - j) % plan.history] = e_j if plan.basis == "eps" else (x_j - (1 - a[t]).sqrt() * e_j) / a[t].sqrt()
        x = state(k)
        # the row applied in float64 (the kernel's float32 table would round the coefficients
        # far above these errors): x_s = C_X x + C_X0 x̂_0 + C_EPS ε̂ + Σ_j C_Hj h_j
        row = plan.rows[k]
        e = eps(x, torch.full((4,), 499))
        out = row[int(C_X)] * x + row[int(C_X0)] * (row[int(X0_X)] * x - row[int(X0_EPS)] * e) + row[int(C_EPS)] * e
        for j in range(1, plan.history + 1):
            out = out + row[int(HISTORY[j - 1])] * ring[(k - j) % plan.history]
        errs.append((out - exact_flow(xT, a[plan.timesteps[0]], a[plan.prev[k]])).abs().max().item())
    for p in slopes(errs, steps):
        assert order + 1 - 0.3 < p < order + 1 + 0.3, (errs, p)


# ------------------------------------------------------------------ diffusers configs and bad input


def test_a_unipc_config_is_honoured_key_by_key():
    from fastddpm.models.loading import read_scheduler_config

    c = {"_class_name": "UniPCMultistepScheduler", "solver_order": 3, "solver_type": "bh1", "prediction_type": "v_prediction",
         "lower_order_final": False, "disable_corrector": [0], "timestep_spacing": "trailing", "predict_x0": True}
    schedule, conv = read_scheduler_config(c)
    m, used = conv.resolve("unipc")
    assert (m.order, m.solver_type, m.lower_order_final, m.disable_corrector, m.prediction, m.spacing) == \
        (3, "bh1", False, (0,), "v", "trailing")
    assert used["order"][1] == "scheduler_config.json: solver_order"
    m2, used2 = conv.resolve("unipc", order=1)  # the user's choice wins
    assert m2.order == 1 and used2["order"][1] == "given"
    m3, used3 = conv.resolve("ipndm")  # UniPC's order is not iPNDM's
    assert m3.checked(1000).order == ORDERS["ipndm"][2] and "does not apply" in used3["order"][1]
    # a DPMSolverMultistepScheduler config with solver_order=3 and logSNR steps
    c = {"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3, "use_lu_lambdas": True, "lower_order_final": False}
    _, conv = read_scheduler_config(c)
    m, used = conv.resolve("dpm++3m")
    assert (m.spacing, m.lower_order_final) == ("logsnr", False)
    assert conv.resolve("ddim")[0].spacing == "trailing"  # a solver's grid does not apply to DDIM


@pytest.mark.parametrize("config,match", [
    ({"_class_name": "UniPCMultistepScheduler", "predict_x0": False}, "predict_x0"),
    ({"_class_name": "UniPCMultistepScheduler", "solver_type": "bh3"}, "solver_type"),
    ({"_class_name": "UniPCMultistepScheduler", "solver_order": 4}, "solver_order"),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_type": "heun"}, "solver_type"),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": True, "use_karras_sigmas": True}, "use_lu_lambdas"),
    ({"_class_name": "DDIMScheduler", "solver_order": 2}, "solver_order"),
    ({"_class_name": "UniPCMultistepScheduler", "disable_corrector": "all"}, "disable_corrector"),
])
def test_scheduler_configs_fastddpm_cannot_honour_are_refused_by_name(config, match):
    from fastddpm.models.loading import read_scheduler_config

    with pytest.raises(ValueError, match=f"has {match}="):
        read_scheduler_config(config)


def test_bad_solver_options_are_clear_errors_before_any_work():
    calls = []

    def model(x, t):
        calls.append(1)
        return x

    for kw, match in (
        (dict(method="unipc", order=4), "order: unipc has orders 1 to 3, got 4"),
        (dict(method="ipndm", order=0), "order: ipndm has orders 1 to 4, got 0"),
        (dict(method="unipc", order=2.0), "order: unipc has orders 1 to 3"),
        (dict(method="dpm++3m", order=3), "order: only unipc and ipndm take an order .*'dpm\\+\\+3m' is order 3 by name"),
        (dict(method="ddim", order=2), "order: only unipc and ipndm take an order, not 'ddim'"),
        (dict(method="unipc", solver_type="bh3"), "solver_type: expected one of \\('bh1', 'bh2'\\)"),
        (dict(method="dpm++3m", solver_type="bh1"), "solver_type: only unipc takes a solver type"),
        (dict(method="dpm++3m", corrector=True), "corrector: only unipc has a corrector"),
        (dict(method="unipc", corrector="on"), "corrector: expected True or False"),
        (dict(method="ipndm", disable_corrector=[1]), "disable_corrector: only unipc has a corrector"),
        (dict(method="unipc", corrector=False, disable_corrector=[1]), "disable_corrector: given with corrector=False"),
        (dict(method="unipc", disable_corrector=[-1]), "disable_corrector: expected step indices"),
        (dict(method="ipndm", lower_order_final=False), "lower_order_final: only dpm\\+\\+3m, sde-dpm\\+\\+3m and unipc"),
        (dict(method="ddim", spacing="logsnr"), "spacing: 'logsnr' is a multistep solver's grid"),
        (dict(method="sde-dpm++3m", steps=50, spacing="logsnr"), "spacing: 'logsnr' with steps=50 .* repeated"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            Sampler(model, LINEAR, shape=SHAPE, progress=False, **kw)
    assert not calls


def test_fewer_steps_than_the_order_warm_up_and_down():
    # 2 steps of UniPC-3 / iPNDM-4 / 3M: the first is first order, the last first order (UniPC, 3M)
    # or second (iPNDM: order min(4, step + 1)); the rows weigh no output that does not exist
    for method, options in (("unipc", dict(order=3)), ("ipndm", dict(order=4)), ("dpm++3m", {})):
        rows = Plan.build(LINEAR, method, steps=2, **options).rows
        hist = rows[:, [int(c) for c in HISTORY]]
        assert (hist[0] == 0).all() and (hist[1, 1:] == 0).all()


def test_a_history_that_does_not_match_the_method_is_refused(impl, device):
    x = torch.randn(2, *SHAPE, device=device)
    k = torch.zeros(2, dtype=torch.int64, device=device)
    p3 = Plan.build(LINEAR, "unipc", steps=5, order=3)  # 3 slots
    with pytest.raises(ValueError, match=r"h: unipc \(order 3\) keeps 3 earlier output\(s\): expected a ring of shape \(3, B"):
        fused.sampler_step(x, x, k, p3, h=torch.zeros((2, *x.shape), device=device))
    with pytest.raises(ValueError, match=r"h: unipc \(order 3\) is a multistep solver: pass its history ring of 3"):
        fused.sampler_step(x, x, k, p3)
    table, ts = p3.table(device), p3.timesteps_on(device)
    with pytest.raises(ValueError, match=r"h: this table weighs outputs stored up to 3 steps earlier .* got 1 slot"):
        K.sampler_step(x, x, k, table, ts, h=torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"h: this table weighs outputs .* got no history"):
        K.sampler_step(x, x, k, table, ts)
    with pytest.raises(ValueError, match=r"h: expected a history ring of shape \(NH, 2, 3, 6, 5\) with NH in 1..3"):
        K.sampler_step(x, x, k, table, ts, h=torch.zeros((4, *x.shape), device=device))
    with pytest.raises(ValueError, match="basis: expected one of"):
        K.sampler_step(x, x, k, table, ts, h=torch.zeros((3, *x.shape), device=device), basis="v")
    with pytest.raises(ValueError, match="out_h: only a one-slot history"):
        K.sampler_step(x, x, k, table, ts, h=torch.zeros((3, *x.shape), device=device), out_h=torch.zeros_like(x))
    with pytest.raises(ValueError, match="plan: the reference steps unipc only within a chain"):
        R.sampler_step(x.cpu(), x.cpu(), k.cpu(), p3, h=torch.zeros((3, *x.shape)))
