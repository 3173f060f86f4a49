"""Classifier-free guidance in the fused path: the step kernel combining the conditional and
unconditional outputs (never writing the guided ε̂) against the reference's combination, for
every method and spacing, both CPU backends, multi-tile and odd-channel shapes; guided chains
of the Sampler against the reference (two eager calls, Ho & Salimans) and against diffusers'
schedulers fed the guided ε̂; guidance in an interval; the seed/label address; bad input."""

import types

import pytest
import torch
from helpers import assert_close_fp, assert_fp32_chain

from fastddpm import Plan, Sampler, Schedule, UNet, UNetConfig, fused
from fastddpm import kernels as K
from fastddpm import reference as R

S = Schedule.linear()
METHODS = [("ddpm", dict(steps=10)), ("ddpm", dict(steps=10, variance="small", clip=True)), ("ddim", dict(steps=10)),
           ("ddim", dict(steps=10, eta=1.0)), ("dpm++2m", dict(steps=10)), ("sde-dpm++2m", dict(steps=10)),
           ("dpm++2m", dict(steps=10, spacing="karras")), ("ddim", dict(steps=10, prediction="v"))]
SPACINGS = ("trailing", "leading", "linspace", "quad")


def method_id(c):
    return c[0] + "".join(f"-{k}={v}" for k, v in c[1].items())


class ToyConditional:
    """A class-conditional denoiser-like model: the Gaussian-data ε̂ plus a label-dependent,
    channel-mixing term; label N (the null label) is the unconditional one. Per sample, so a
    batch's size never changes a sample's arithmetic."""

    def __init__(self, n: int = 4):
        self.config = types.SimpleNamespace(num_classes=n, sample_size=5, in_channels=3)
        self.shift = torch.linspace(-0.4, 0.4, n + 1)

    def __call__(self, x, t, labels):
        a = S.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x - a.sqrt() * 0.3) / (a * 0.25 + 1 - a)
        s = self.shift.to(x.device, x.dtype)[labels.long()].view(-1, 1, 1, 1)
        return eps + s * torch.tanh(x.flip(1)) * torch.cos(t.to(x.dtype) / 300).view(-1, 1, 1, 1)


STEP_CASES = [(m, {"spacing": sp, **o}) for m, o in METHODS for sp in (SPACINGS if "spacing" not in o else ("karras",))]


@pytest.mark.parametrize("config", STEP_CASES, ids=method_id)
@pytest.mark.parametrize("shape, channels_last", [((3, 5, 17, 19), False), ((2, 3, 33, 35), True)], ids=["odd-C", "multi-tile-NHWC"])
def test_fused_guided_step_equals_the_reference_combination(impl, device, config, shape, channels_last):
    method, options = config
    plan = Plan.build(S, method, guidance=2.5, guidance_interval=(150, 850), **options)
    g = torch.Generator().manual_seed(7)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, ec, eu, h = (torch.randn(shape, generator=g).to(device).contiguous(memory_format=fmt) for _ in range(4))
    B = shape[0]
    seeds = torch.arange(B, device=device) + 11
    w = plan.method.guide_weights(list(plan.timesteps))
    assert 1.0 in w and 2.5 in w  # the interval leaves some steps unguided
    for i in (w.index(2.5), w.index(1.0), plan.K - 1):  # a guided step, an unguided one, the last
        k = torch.full((B,), i, device=device)
        hh = h if plan.multistep else None
        guided = eu + w[i] * (ec - eu)  # what the kernel must form in registers
        got = fused.sampler_step(x, ec, k, plan, seeds=seeds, h=None if hh is None else hh.clone(), eps_uncond=eu)[0]
        exact = R.sampler_step(x.double(), guided.double(), k, plan, seeds=seeds if plan.stochastic else None,
                               h=None if hh is None else hh.double())[0]
        assert_close_fp(got, exact.float(), torch.float32)


def toy_unet(n=4):
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=3, out_channels=3, sample_size=8, base_channels=16, channel_mult=(1, 2),
                           layers_per_block=1, attn_resolutions=(4,), norm_groups=8, num_classes=n)).eval()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("config", METHODS, ids=method_id)
def test_guided_chains_equal_the_reference(backend, config):
    method, options = config
    model, seeds, labels = ToyConditional(), torch.tensor([3, 11, 5]), torch.tensor([0, 3, 1])
    kw = dict(guidance=3.0, guidance_interval=(100, 900), **options)
    exact = R.sample(model, S, seeds, (3, 5, 5), method, labels=labels, dtype=torch.float64, **kw)
    plain = R.sample(model, S, seeds, (3, 5, 5), method, labels=labels, dtype=torch.float32, **kw)
    with K.cpu_backend(backend):
        fast = Sampler(model, S, method=method, shape=(3, 5, 5), progress=False, **kw).run(seeds=seeds, labels=labels)
    assert_fp32_chain(fast, exact, plain, steps=10)
    unguided = Sampler(model, S, method=method, shape=(3, 5, 5), progress=False, **options).run(seeds=seeds, labels=labels)
    assert (unguided - fast).abs().max() > 1e-3  # guidance changed the images


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm++2m"])
def test_guided_chains_equal_diffusers_fed_the_guided_eps(method, monkeypatch):
    from test_parameterizations import SEEDS, SHAPE, chain_in_diffusers

    model, labels, w = ToyConditional(), torch.tensor([2, 0]), 4.0
    null = torch.full_like(labels, 4)

    def guided(x, t):  # eager, outside both samplers: ε̂(∅) + w (ε̂(c) − ε̂(∅))
        return model(x, t, null) + w * (model(x, t, labels) - model(x, t, null))

    ours = R.sample(model, S, SEEDS, SHAPE, method, labels=labels, steps=10, guidance=w, dtype=torch.float64)
    theirs = chain_in_diffusers(method, S, "epsilon", 10, monkeypatch, model=guided)
    torch.testing.assert_close(ours, theirs)


def test_an_image_depends_on_its_seed_and_label_only():
    model = ToyConditional()
    s = Sampler(model, S, method="ddim", steps=8, guidance=2.0, shape=(3, 5, 5), progress=False)
    L = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    full = s.run(batch=8, seed=0, labels=L)
    torch.testing.assert_close(full[4:], s.run(batch=4, seed=4, labels=L[4:]), rtol=0, atol=0)
    torch.testing.assert_close(full, s.run(batch=8, seed=0, labels=L, max_batch=3), rtol=0, atol=0)
    assert (full[0] - s.run(batch=1, seed=0, labels=[2])[0]).abs().max() > 1e-3  # another label, another image
    torch.testing.assert_close(s.run(batch=3, seed=0, labels=1), s.run(batch=3, seed=0, labels=[1, 1, 1]), rtol=0, atol=0)


class Counting(ToyConditional):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __call__(self, x, t, labels):
        self.calls.append(x.shape[0])
        return super().__call__(x, t, labels)


def test_outside_the_interval_the_unconditional_half_is_skipped():
    model = Counting()
    s = Sampler(model, S, method="ddim", steps=10, guidance=3.0, guidance_interval=(300, 700), shape=(3, 5, 5), progress=False)
    s.run(batch=2, seed=0, labels=[0, 1])
    calls = model.calls
    guided_steps = s.plan.kinds.count("guided")
    assert 0 < guided_steps < s.plan.K
    # one warm-up step of each kind, then the run: the 2B batch only where w != 1
    assert sorted(calls) == sorted([2, 4] + [4] * guided_steps + [2] * (s.plan.K - guided_steps))


class Recording(ToyConditional):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __call__(self, x, t, labels):
        self.calls.append(labels.tolist())
        return super().__call__(x, t, labels)


@pytest.mark.parametrize("interval", [None, (300, 700)])
def test_w0_steps_call_the_model_once_with_the_null_label(interval):
    """w = 0 is ε̂(x, ∅) exactly: those steps run B images with the null label, no conditional
    half, and the chain equals the reference's two-call combination; with no label asked for
    anywhere (w = 0 on every step) the labels may be left out."""
    model, labels = Recording(), torch.tensor([0, 3])
    s = Sampler(model, S, method="sde-dpm++2m", steps=10, guidance=0.0, guidance_interval=interval, shape=(3, 5, 5),
                progress=False)
    fast = s.run(seeds=[4, 9], labels=labels)
    null = [4, 4]
    w0 = [t for t in s.plan.timesteps if interval is None or interval[0] < t <= interval[1]]
    run = model.calls[-s.plan.K:]
    assert run.count(null) == len(w0) and all(c in (null, [0, 3]) for c in run)  # B images a step, never 2B
    exact = R.sample(ToyConditional(), S, torch.tensor([4, 9]), (3, 5, 5), "sde-dpm++2m", steps=10, labels=labels,
                     guidance=0.0, guidance_interval=interval, dtype=torch.float64)
    torch.testing.assert_close(fast, exact.float(), rtol=1e-4, atol=1e-4)
    if interval is None:
        torch.testing.assert_close(s.run(seeds=[4, 9]), fast, rtol=0, atol=0)  # the labels change nothing at w = 0
    else:
        with pytest.raises(ValueError, match="labels: this model is class-conditional"):
            s.run(seeds=[4, 9])


def test_a_class_conditional_unet_samples_with_guidance():
    """Against the float64 chain (the net in float64), by the suite's fp32-chain rule. An untrained
    U-Net's x̂_0 reaches |x| ≈ 700 here, so small pixels are differences of large fp32 terms: a
    fixed 1e-4 against the fp32 reference failed by 2e-5 on one pixel on CI's CPU (its conv sums
    round differently). Measured here, both fp32 chains are about 3e-4 from the exact one."""
    import copy

    net, kw = toy_unet(), dict(labels=torch.tensor([0, 1, 2]), steps=4, guidance=2.0)
    s = Sampler(net, S, method="dpm++2m", steps=4, guidance=2.0, progress=False)
    out = s.run(batch=3, seed=0, labels=[0, 1, 2])
    plain = R.sample(net, S, torch.arange(3), (3, 8, 8), "dpm++2m", **kw)
    exact = R.sample(copy.deepcopy(net).double(), S, torch.arange(3), (3, 8, 8), "dpm++2m", dtype=torch.float64, **kw)
    assert_fp32_chain(out, exact, plain, steps=4)
    unguided = Sampler(net, S, method="dpm++2m", steps=4, progress=False).run(batch=3, seed=0, labels=[0, 1, 2])
    assert (unguided - out).abs().max() > 1e-2  # guidance changed the images


def _plain(x, t):
    return x


@pytest.mark.parametrize("fn, match", [
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), progress=False).run(batch=2, labels=[0, 4]),
     r"labels: expected classes in \[0, 4\)"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), progress=False).run(batch=2, labels=[0]), "labels: expected one label"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), progress=False).run(batch=2, labels=[0.0, 1.0]), "labels: expected ints"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), progress=False).run(batch=2, labels=torch.tensor([0.0, 1.0])),
     "labels: expected an integer tensor"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), progress=False).run(batch=2), "labels: this model is class-conditional"),
    (lambda: Sampler(_plain, S, shape=(3, 5, 5), progress=False).run(batch=2, labels=[0, 1]), "labels: this model is unconditional"),
    (lambda: Sampler(_plain, S, shape=(3, 5, 5), guidance=2.0), "guidance: classifier-free guidance needs a class-conditional"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), guidance=-1.0), "guidance: expected a finite weight"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), guidance=float("inf")), "guidance: expected a finite weight"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), guidance=2.0, guidance_interval=(700, 300)), "guidance_interval:"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), guidance=2.0, guidance_interval=(500, 500)), "guidance_interval:"),
    (lambda: Sampler(ToyConditional(), S, shape=(3, 5, 5), guidance_interval=(100, 500)), "guidance_interval: given without"),
    (lambda: Plan.build(S, "ddim", guidance=2.0, guidance_interval=(100,)), "guidance_interval:"),
])
def test_bad_input(fn, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fn()
