"""The addressed normals: distribution, independence, and invariance of each sample's
noise to batch, layout and backend. Fixed seeds; every bound is 6 sigma (or a p-value
of 1e-9, about the same two-sided tail), so these never flake."""

import math
import os

import numpy as np
import pytest
import torch
from helpers import SCHEDULE, rand_image
from scipy import stats

from fastddpm import kernels as K
from fastddpm.kernels.philox import MAX_ABS_NORMAL

P_MIN = 1e-9  # ~6 sigma, two-sided
SHAPE = (64, 4, 64, 64)  # 2**20 normals: four full lanes per Philox call


def _draw(seed0=0, t0=0, stream=0, shape=SHAPE, device="cpu"):
    B = shape[0]
    seeds = torch.arange(B, device=device) + seed0
    t = torch.arange(B, device=device) * 7 + t0
    return K.randn(shape, seeds, t, stream).cpu().double()


@pytest.fixture(params=["torch"] if os.environ.get("FASTDDPM_TEST_DEVICE", "cpu") == "cpu" else ["triton"])
def generator(request):
    """The generator the 2**20-normal statistics run on. On CUDA the compiled kernels. On the
    CPU the torch twin only: the interpreted Triton kernel draws the same words bit for bit and
    normals within 2e-6 of the twin's (tests/test_philox.py, shapes across tile edges), so
    its statistics are the twin's; drawing 2**20 normals through the interpreter once per
    test cost CI over three minutes and tested nothing more."""
    with K.cpu_backend(request.param):
        yield request.param


def _corr(a, b):
    a = (a - a.mean()) / a.std()
    b = (b - b.mean()) / b.std()
    return float((a * b).mean())


@pytest.mark.slow
def test_moments_ks_and_chi2(generator, device):
    x = _draw(device=device).flatten().numpy()
    n = x.size
    assert n >= 2**20
    assert abs(x.mean()) < 6 / math.sqrt(n)
    assert abs(x.var() - 1) < 6 * math.sqrt(2 / n)
    assert abs(stats.skew(x)) < 6 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(x)) < 6 * math.sqrt(24 / n)
    assert stats.kstest(x, "norm").pvalue > P_MIN
    # χ² over 200 equiprobable bins of N(0, 1)
    edges = stats.norm.ppf(np.linspace(0, 1, 201)[1:-1])
    counts = np.bincount(np.searchsorted(edges, x), minlength=200)
    assert stats.chisquare(counts).pvalue > P_MIN
    assert np.abs(x).max() < MAX_ABS_NORMAL  # the documented bound


@pytest.mark.slow
def test_lag_and_lane_correlations(generator, device):
    x = _draw(device=device)  # (B, C, H, W)
    n = x.numel()
    flat = x.flatten()
    for lag in (1, 2, 3, 4, 5, 8, 64, 4096):  # neighbours in the logical order, rows, planes
        assert abs(_corr(flat[:-lag], flat[lag:])) < 6 / math.sqrt(n - lag), lag
    # lanes of one Philox call: channels 0..3 of the same pixel, and their squares
    # (lanes 0/1 and 2/3 share a Box-Muller radius)
    for i in range(4):
        for j in range(i + 1, 4):
            a, b = x[:, i].flatten(), x[:, j].flatten()
            assert abs(_corr(a, b)) < 6 / math.sqrt(a.numel()), (i, j)
            assert abs(_corr(a * a, b * b)) < 6 / math.sqrt(a.numel()), (i, j)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["seed", "timestep", "stream"])
def test_independence_across_addresses(generator, device, what):
    base = _draw(device=device)
    other = {
        "seed": lambda: _draw(seed0=1, device=device),  # sample b gets seed b+1: a neighbour's key
        "timestep": lambda: _draw(t0=1, device=device),
        "stream": lambda: _draw(stream=1, device=device),
    }[what]()
    assert not torch.equal(base, other)
    assert abs(_corr(base.flatten(), other.flatten())) < 6 / math.sqrt(base.numel())


def test_batch_invariance(impl, device):
    shape = (8, 3, 17, 19)
    seeds = torch.arange(8, device=device) + 100
    t = torch.arange(8, device=device) * 111
    full = K.randn(shape, seeds, t, K.STREAM_REVERSE)
    for k in range(8):
        alone = K.randn((1, 3, 17, 19), seeds[k : k + 1], t[k : k + 1], K.STREAM_REVERSE)
        assert torch.equal(full[k : k + 1], alone)
    # the same through the kernels: a micro-batch gives the same samples
    x0 = rand_image(shape, torch.float32, device, 1)
    table = SCHEDULE.table(device=device)
    a = K.q_sample(x0, t, table, seeds=seeds)
    b = torch.cat([K.q_sample(x0[i : i + 3], t[i : i + 3], table, seeds=seeds[i : i + 3]) for i in (0, 3, 6)])
    assert torch.equal(a, b)
    eps = rand_image(shape, torch.float32, device, 2)
    s_full = K.reverse_step(x0, eps, t, table, seeds=100)  # int seed s means s, s+1, ...
    s_tail = K.reverse_step(x0[5:], eps[5:], t[5:], table, seeds=105)
    assert torch.equal(s_full[5:], s_tail)


def test_layout_invariance(impl, device):
    shape = (3, 5, 7, 9)
    seeds = torch.tensor([1, 2, 3], device=device)
    t = torch.tensor([0, 10, 999], device=device)
    a = K.randn(shape, seeds, t, 0, device=device)
    b = K.randn(shape, seeds, t, 0, device=device, channels_last=True)
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)
    x0 = rand_image(shape, torch.float32, device, 3)
    table = SCHEDULE.table(device=device)
    xa = K.q_sample(x0, t, table, seeds=seeds)
    xb = K.q_sample(x0.contiguous(memory_format=torch.channels_last), t, table, seeds=seeds)
    assert torch.equal(xa, xb)
