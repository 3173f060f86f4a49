"""The Sampler against the reference sampler, its seed contract, compile, bad input."""

import copy
import math

import pytest
import torch
from torch._dynamo.utils import counters

from helpers import tiny_unet

from fastddpm import Sampler, Schedule, reference, save_grid
from fastddpm import kernels as K

SHAPE = (3, 8, 8)
SHORT = Schedule.linear(T=12, beta_start=1e-3, beta_end=0.2)  # a whole schedule, quickly


@pytest.fixture(scope="module")
def net():
    return tiny_unet()


def _sampler(net, schedule=SHORT, **kw):
    kw.setdefault("compile", False)
    return Sampler(net, schedule, progress=False, **kw)


@pytest.mark.parametrize("variance", ["large", "small", "none"])
@pytest.mark.parametrize("clip", [False, True])
def test_full_short_schedule_matches_reference(net, variance, clip):
    got = _sampler(net, variance=variance, clip=clip).run(batch=3, seed=11)
    ref = reference.sample(net, SHORT, torch.arange(11, 14), SHAPE, variance=variance, clip=clip)
    torch.testing.assert_close(got, ref)
    if clip:  # the clipped sampler's x̂_0 lies in [-1, 1], and the last step returns it
        assert got.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("variance", ["large", "small"])
def test_first_steps_of_t1000_match_reference(net, variance):
    sched = Schedule.linear()
    got = _sampler(net, sched, variance=variance).run(batch=2, seed=5, stop_after=4)
    ref = reference.sample(net, sched, torch.tensor([5, 6]), SHAPE, variance=variance, stop_after=4)
    torch.testing.assert_close(got, ref)


def test_seed_contract(net):
    s = _sampler(net)
    a = s.run(batch=8, seed=0)
    torch.testing.assert_close(s.run(batch=8, seed=0), a, rtol=0, atol=0)  # deterministic
    torch.testing.assert_close(s.run(batch=4, seed=4), a[4:])  # batch invariant
    torch.testing.assert_close(s.run(batch=8, seed=0, max_batch=3), a)  # micro-batches of 3, 3, 2
    torch.testing.assert_close(s.run(seeds=torch.tensor([6, 1])), a[[6, 1]])  # explicit seeds
    torch.testing.assert_close(s.run(seeds=[6, 1]), a[[6, 1]])  # ... or any sequence of ints
    assert not torch.allclose(a[0], a[1])  # and different seeds give different images


def test_micro_batches_are_balanced(net):
    s = _sampler(net)
    s.run(batch=5, seed=0, max_batch=4)
    assert s.stats["chunks"] == 2 and s.stats["micro_batch"] == 3  # 3 + 2, not 4 + 1


def test_channels_last_and_diffusers_style_output(net):
    class Wrapped(torch.nn.Module):  # returns an object with .sample, like diffusers
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return type("Out", (), {"sample": self.net(x, t)})()

    a = _sampler(net, channels_last=False).run(batch=2, seed=3)
    b = _sampler(Wrapped(), channels_last=True, shape=SHAPE).run(batch=2, seed=3)
    torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_compiled_step_is_one_graph_for_all_timesteps(net):
    torch._dynamo.reset()
    counters.clear()
    s = _sampler(net, compile=True)
    # the step's graph traces the update's draw in; the prior's draw (run() resets x outside the
    # step) would be the twin's own compiled function, another graph: the eager twin leaves it out
    with K.cpu_twin("eager"):
        got = s.run(batch=2, seed=1)
        assert counters["stats"]["unique_graphs"] == 1  # fullgraph, and no recompile across t
        torch.testing.assert_close(got, reference.sample(net, SHORT, torch.tensor([1, 2]), SHAPE))
        s.run(batch=2, seed=9)
        assert counters["stats"]["unique_graphs"] == 1  # reused across runs


@pytest.mark.slow
def test_compiled_multistep_step_is_one_graph_and_turns_its_ring(net):
    # UniPC-3 (three history slots, the corrector folded in) and iPNDM (ε̂ stored): the ring's
    # gather and scatter trace into the step's one graph; the chain equals the reference's to
    # the rounding of the compiled U-Net, whose reordered sums the multistep weights amplify
    for method, options in (("unipc", dict(order=3)), ("ipndm", dict(order=4))):
        torch._dynamo.reset()
        counters.clear()
        s = _sampler(net, Schedule.linear(), method=method, steps=8, compile=True, **options)
        with K.cpu_twin("eager"):
            got = s.run(batch=2, seed=1)
            assert counters["stats"]["unique_graphs"] == 1
        ref = reference.sample(copy.deepcopy(net).double(), Schedule.linear(), torch.tensor([1, 2]), SHAPE, method, steps=8,
                               dtype=torch.float64, **options)
        eager = _sampler(net, Schedule.linear(), method=method, steps=8, **options).run(batch=2, seed=1)
        scale = ref.abs().max().item()  # an untrained U-Net's images: values in the hundreds
        errors = [(eager.double() - ref).abs().max().item() / scale, (got.double() - ref).abs().max().item() / scale]
        assert max(errors) < 1e-5, errors  # fp32 rounding (2**-24 = 6e-8 a step), amplified by the chain's weights


def test_bad_input(net):
    with pytest.raises(ValueError, match="variance: expected one of"):
        Sampler(net, variance="fixed_large")
    s = _sampler(net)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch: expected a positive int"):
            s.run(batch=bad)
    with pytest.raises(ValueError, match=r"stop_after: expected an int in \[1, 12\]"):
        s.run(batch=1, stop_after=13)
    for bad in ([1, 2.5], [], ["a"], [2**63]):
        with pytest.raises(ValueError, match="seeds: expected a non-empty sequence of ints"):
            s.run(seeds=bad)
    with pytest.raises(ValueError, match="seed: seeds .* must fit int64"):
        s.run(batch=4, seed=2**63 - 2)
    with pytest.raises(ValueError, match="shape: the model has no config"):
        Sampler(lambda x, t: x)
    with pytest.raises(ValueError, match=r"model: returned shape \(2, 1, 8, 8\), expected \(2, 3, 8, 8\)"):
        _sampler(lambda x, t: x[:, :1], shape=SHAPE).run(batch=2)
    with pytest.raises(TypeError, match="model: returned dtype torch.int64"):
        _sampler(lambda x, t: x.long(), shape=SHAPE).run(batch=2)


def test_non_finite_output_names_the_step(net):
    def blows_up(x, t):  # NaN once t reaches 7: step 5 of 12
        return torch.where((t < 8).view(-1, 1, 1, 1), torch.full_like(x, math.nan), x * 0)

    with pytest.raises(FloatingPointError, match=r"first appeared at timestep t=7 \(step 5 of 12\) in 2 of 2 images") as e:
        _sampler(blows_up, shape=SHAPE).run(batch=2)
    assert e.value.images.shape == (2, *SHAPE) and e.value.bad.all()


def test_non_finite_only_in_a_padding_slot_is_not_an_error(net):
    # 5 images in micro-batches of 3: the second holds seeds 3, 4 and a padding slot (seed 5),
    # whose result is discarded; a model that blows up only there must not fail the run.
    def blows_up_for_seed_5(x, t):
        bad = torch.zeros(x.shape[0], dtype=torch.bool)
        if x.shape[0] == 3 and bool((x[2] == x5).all()):
            bad[2] = True
        return torch.where(bad.view(-1, 1, 1, 1), torch.full_like(x, math.nan), x * 0)

    from fastddpm import kernels as K

    x5 = K.randn((1, *SHAPE), torch.tensor([5]), torch.zeros(1, dtype=torch.int64), K.STREAM_PRIOR)[0]
    images = _sampler(blows_up_for_seed_5, shape=SHAPE).run(batch=5, max_batch=3, stop_after=1)
    assert torch.isfinite(images).all()
    with pytest.raises(FloatingPointError, match="in 1 of 6 images, the first of them seed 5"):
        _sampler(blows_up_for_seed_5, shape=SHAPE).run(batch=6, max_batch=3, stop_after=1)


def test_grid_png(tmp_path, net):
    images = _sampler(net, clip=True).run(batch=6, seed=0)
    path = save_grid(images, tmp_path / "grid.png", nrow=3)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == (3 * 10 + 2, 2 * 10 + 2)


def test_bf16_model_reads_the_fused_second_output(net):
    # dtype=bf16 gives the model its own bf16 channels-last input, written by the fused
    # step alongside the fp32 state (the CUDA default, here on the CPU)
    sched = Schedule.linear()
    lowp = _sampler(net, sched, dtype=torch.bfloat16)
    got = lowp.run(batch=2, seed=0, stop_after=3)
    b = lowp._buffers[2]
    assert b.x.dtype == torch.float32 and b.x_in.dtype == torch.bfloat16
    assert b.x_in.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(b.x_in, b.x.to(torch.bfloat16), rtol=0, atol=0)
    assert next(net.parameters()).dtype == torch.float32  # the caller's model untouched
    torch.testing.assert_close(got, _sampler(net, sched).run(batch=2, seed=0, stop_after=3), rtol=0, atol=2e-2)
