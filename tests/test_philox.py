"""The generator itself: bit-exact Philox words against an independent NumPy Philox,
checked in turn against the Random123 known-answer vectors."""

import numpy as np
import pytest
import torch
from helpers import triton_backend

from fastddpm import kernels as K
from fastddpm.kernels.philox import MAX_ABS_NORMAL, angle_torch, normals_torch, uniform_torch

M32 = np.uint64(0xFFFFFFFF)


def philox4x32_10_numpy(ctr, key):
    """Salmon et al. (2011), Philox4x32 with 10 rounds, written from the paper: uint64
    products of uint32 words are exact, so no splitting is needed here."""
    c = [np.asarray(v, dtype=np.uint64) for v in ctr]
    k0, k1 = (np.asarray(v, dtype=np.uint64) for v in key)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
        k0 = (k0 + np.uint64(0x9E3779B9)) & M32
        k1 = (k1 + np.uint64(0xBB67AE85)) & M32
    return c


# Random123's kat_vectors for philox4x32_10: (counter, key) -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_numpy_reference_against_known_answers(ctr, key, expected):
    assert [int(v) for v in philox4x32_10_numpy(ctr, key)] == list(expected)


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_torch_twin_against_known_answers(ctr, key, expected):
    seed = torch.tensor(key[0] | (key[1] << 32), dtype=torch.uint64).view(torch.int64)
    words = K.philox(seed, *(torch.tensor(v, dtype=torch.int64) for v in ctr))
    assert [int(w) for w in words] == list(expected)


def _numpy_words(seeds, t, stream, C, HW):
    """(B, G, 4, HW) words of the addressing contract, from the NumPy Philox."""
    B, G = len(seeds), (C + 3) // 4
    out = np.zeros((B, G, 4, HW), dtype=np.uint64)
    p = np.arange(HW, dtype=np.uint64)
    for b in range(B):
        key_bits = np.array([seeds[b]], dtype=np.int64).view(np.uint64)[0]
        key = (key_bits & M32, key_bits >> np.uint64(32))
        for g in range(G):
            ctr = (p, np.full(HW, g, np.uint64), np.full(HW, t[b] & 0xFFFFFFFF, np.uint64), np.full(HW, stream, np.uint64))
            out[b, g] = np.stack(philox4x32_10_numpy(ctr, key))
    return out.astype(np.int64)


@pytest.mark.parametrize("C,HW", [(3, 17 * 19), (1, 64), (5, 9), (8, 1030)])
@pytest.mark.parametrize("stream", [K.STREAM_NOISING, K.STREAM_REVERSE, 7, 2**31 + 5, 2**32 - 1])
def test_words_bit_exact_against_numpy(impl, device, C, HW, stream):
    seeds = [0, 1, -1, 2**40 + 3, -(2**62)]
    t = [0, 999, 5, 2**31 - 1, 123]
    expected = _numpy_words(seeds, t, stream, C, HW)
    st = torch.tensor(seeds, device=device)
    tt = torch.tensor(t, device=device)
    words = K.philox_words(st, tt, stream, C, HW)
    np.testing.assert_array_equal(words.cpu().numpy(), expected)


def test_stream_words_of_2_31_and_more_on_every_kernel(impl, device):
    # Triton passes an int >= 2**31 as i64: the counter word must wrap, not fail to bitcast.
    shape = (2, 3, 8, 8)
    seeds = torch.tensor([1, 2], device=device)
    t = torch.tensor([0, 9], device=device)
    for stream in (2**31, 2**32 - 1):
        a = K.randn(shape, seeds, t, stream)
        with K.cpu_backend("torch"):
            b = K.randn(shape, seeds.cpu(), t.cpu(), stream)
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=2e-6)
        x = torch.ones(shape, device=device)
        table = K.coef_table(torch.linspace(0.99, 0.01, 10), device=device)
        ref = K.q_sample(x, t, table, noise=a)
        torch.testing.assert_close(K.q_sample(x, t, table, seeds=seeds, stream=stream), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"stream: expected an int in \[0, 2\*\*32\)"):
        K.randn(shape, seeds, t, 2**32)


def test_angles_lie_in_the_open_half_turn_and_equal_the_old_ones_mod_2pi():
    # θ = ((w as int32) >> 9 + 1/2) 2π 2^-23: exact grid values in (-π, π), congruent to
    # 2π u of the unsigned uniform of the same word (what the contract used before).
    w = torch.tensor([0, 511, 512, 2**31 - 1, 2**31, 2**32 - 1], dtype=torch.int64)
    th = angle_torch(w).double()
    assert (th.abs() < torch.pi).all()
    u = uniform_torch(w).double()
    for f in (torch.cos, torch.sin):  # the same point of the circle, up to the fp32 rounding of θ
        torch.testing.assert_close(f(th), f(2 * torch.pi * u), rtol=0, atol=1e-6)
    n = normals_torch(torch.tensor([[0], [0], [2**32 - 1], [2**31]], dtype=torch.int64))  # extreme words
    assert n.abs().max() < MAX_ABS_NORMAL and torch.isfinite(n).all()


def test_uniforms_are_exact_and_inside_the_open_interval():
    w = torch.tensor([0, 511, 512, 2**31, 2**32 - 1], dtype=torch.int64)
    u = uniform_torch(w)
    expected = torch.tensor([0.5, 0.5, 1.5, 2**22 + 0.5, 2**23 - 0.5], dtype=torch.float64) * 2.0**-23
    assert torch.equal(u.double(), expected)  # fp32 holds every value exactly
    assert (u > 0).all() and (u < 1).all()


@pytest.mark.parametrize("shape", [(3, 3, 17, 19), (2, 5, 7, 9), (2, 1, 32, 32), (2, 3, 33, 35)])
def test_triton_and_torch_twin_draw_the_same_normals(device, shape):
    # The Triton kernel (interpreted on CPU, compiled on CUDA) against the torch twin on the
    # CPU: the uniforms and angles agree bit for bit; the normals up to log2/sqrt/sin/cos,
    # precise on both sides under the interpreter, the hardware approximations on a GPU,
    # where docs/noise.md bounds the difference: 1e-5 wherever the radius is at least 2^-5
    # (then |n| may be anything), 6e-4 below (then |n| < 2^-5).
    seeds = torch.arange(shape[0]) * 1000003 - 17
    t = torch.arange(shape[0]) * 333
    with K.cpu_backend("torch"):
        a = K.randn(shape, seeds, t, K.STREAM_REVERSE)
    with triton_backend(device):
        b = K.randn(shape, seeds.to(device), t.to(device), K.STREAM_REVERSE).cpu()
    if device.type == "cuda":
        bound = torch.where(a.abs() >= 2**-5, 1e-5, 6e-4)
    else:
        bound = torch.full_like(a, 2e-6)
    assert ((a - b).abs() <= bound).all(), (a - b).abs().max()


def test_cpu_tensors_draw_through_the_compiled_twin(monkeypatch):
    # the faster twin is the one the kernels use on CPU tensors: every draw (randn, q_sample,
    # reverse and sampler steps, the loss forward and backward, philox_words) goes through the
    # torch.compile'd generator; cpu_twin("eager") through the plain ops, with the same words
    # and normals within 2e-6 (the vectorized log2/sqrt/sin/cos against libm's)
    import importlib
    import os

    P = importlib.import_module("fastddpm.kernels.philox")
    assert K.cpu_twin_name() == os.environ.get("FASTDDPM_CPU_TWIN", "compiled")  # the suite runs the default
    shape, seeds, t = (3, 3, 5, 7), torch.tensor([5, -2, 2**40]), torch.tensor([0, 7, 999])
    table = K.coef_table(torch.linspace(0.99, 0.01, 1000))
    x, e = torch.randn(shape), torch.randn(shape, requires_grad=True)
    ops = {
        "randn": lambda: K.randn(shape, seeds, t, K.STREAM_PRIOR),
        "q_sample": lambda: K.q_sample(x, t, table, seeds=seeds),
        "reverse_step": lambda: K.reverse_step(x, e.detach(), t, table, seeds=seeds),
        "loss": lambda: torch.autograd.grad(K.eps_mse_loss(e, t, seeds=seeds), e)[0],
        "words": lambda: K.philox_words(seeds, t, 3, 3, 35),
    }
    with K.cpu_backend("torch"), K.cpu_twin("compiled"):
        compiled = {k: f() for k, f in ops.items()}  # makes both compiled functions
        calls = []
        for name, fn in list(P._compiled.items()):
            assert fn._torchdynamo_orig_callable is P._TWINS[name]  # a torch.compile of the twin
            monkeypatch.setitem(P._compiled, name, lambda *a, _f=fn, _n=name: calls.append(_n) or _f(*a))
        for k, f in ops.items():
            before = len(calls)
            f()
            assert len(calls) > before, f"{k} did not draw through the compiled twin"
        with K.cpu_twin("eager"):
            before = len(calls)
            eager = {k: f() for k, f in ops.items()}
            assert len(calls) == before  # eager: the compiled functions are not called
    assert torch.equal(compiled["words"], eager["words"])
    for k in ops:
        torch.testing.assert_close(compiled[k], eager[k], rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="cpu_twin: expected one of"):
        with K.cpu_twin("fast"):
            pass
    monkeypatch.setitem(importlib.import_module("fastddpm.kernels._checks")._state, "cpu_twin", "fast")
    with pytest.raises(ValueError, match="FASTDDPM_CPU_TWIN: expected one of"), K.cpu_backend("torch"):
        ops["randn"]()


@pytest.mark.parametrize("B", [1, 2, 5])
def test_the_compiled_twin_is_the_same_in_any_batch(B):
    # an image's noise depends on its address only: row k of a batch equals the batch of that
    # row alone, bit for bit (the compiled loop's vector body and tail compute alike)
    seeds, t = torch.arange(5) * 7919 - 3, torch.tensor([0, 1, 500, 998, 999])
    with K.cpu_backend("torch"), K.cpu_twin("compiled"):
        full = K.randn((5, 5, 3, 7), seeds, t, K.STREAM_REVERSE)
        part = K.randn((B, 5, 3, 7), seeds[5 - B:], t[5 - B:], K.STREAM_REVERSE)
    assert torch.equal(full[5 - B:], part)


def test_a_failing_compiler_falls_back_to_the_eager_twin_with_a_warning(monkeypatch):
    # a machine without a C++ compiler (or with a damaged Inductor cache) still draws: the
    # same words through the eager twin, and a warning that names the way to skip the attempt
    import importlib

    P = importlib.import_module("fastddpm.kernels.philox")

    def broken(*args):
        raise RuntimeError("InductorError: no working C++ compiler found\nmore")

    seeds, t = torch.tensor([3, 4]), torch.tensor([10, 20])
    with K.cpu_backend("torch"), K.cpu_twin("eager"):
        expected = K.philox_words(seeds, t, 1, 3, 6)
    monkeypatch.setitem(P._compiled, "words", broken)
    with K.cpu_backend("torch"), K.cpu_twin("compiled"):
        with pytest.warns(RuntimeWarning, match="compiled CPU noise twin failed .*no working C\\+\\+ compiler.*FASTDDPM_CPU_TWIN=eager"):
            assert torch.equal(K.philox_words(seeds, t, 1, 3, 6), expected)
        assert P._compiled["words"] is P._TWINS["words"]  # once: no second attempt, no second warning


@pytest.mark.parametrize("C,HW", [(3, 17 * 19), (5, 9)])
def test_words_traced_into_a_compiled_caller_are_bit_exact(C, HW):
    # Under torch.compile the CPU twin is traced into the caller's graph (Inductor fuses the draw
    # with what uses it): the words stay those of the NumPy Philox, negative and 2**62 seeds and
    # t >= 2**31 included. (The twin once formed the 32-bit product as a wrapped int64; signed
    # overflow is undefined in the generated C++ and this graph's shape got it miscompiled.)
    seeds = [0, 1, -1, 2**40 + 3, -(2**62)]
    t = [0, 999, 5, 2**31 - 1, 123]
    stream = 2**31 + 5
    expected = _numpy_words(seeds, t, stream, C, HW)
    with K.cpu_backend("torch"):
        words = torch.compile(lambda s, tt: K.philox_words(s, tt, stream, C, HW) + 0, fullgraph=True)(
            torch.tensor(seeds), torch.tensor(t))
        normals = torch.compile(lambda s, tt: K.randn((5, C, 1, HW), s, tt, stream), fullgraph=True)(
            torch.tensor(seeds), torch.tensor(t))
        eager = K.randn((5, C, 1, HW), torch.tensor(seeds), torch.tensor(t), stream)
    np.testing.assert_array_equal(words.numpy(), expected)
    torch.testing.assert_close(normals, eager, rtol=0, atol=2e-6)
