"""pytest-benchmark suites over the bench's cases: `pytest benchmarks/` on a GPU.
Without one every benchmark is skipped, and says so."""

import pytest
import torch

from fastddpm.bench.timing import sync


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU benchmark: needs a CUDA device")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def cuda_timed(benchmark):
    """benchmark(fn) with a CUDA synchronise after each call, so the timer sees the GPU."""

    def run(fn, **extra):
        def target():
            fn()
            sync("cuda")

        benchmark.extra_info.update(extra)
        return benchmark.pedantic(target, warmup_rounds=3, rounds=20, iterations=1)

    return run
