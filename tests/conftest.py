"""Test set-up: the Triton kernels run on the CPU through the interpreter.

TRITON_INTERPRET must be set before fastddpm.kernels is imported (triton.jit reads it
then), so it is set here, at collection time. On a GPU, benchmarks/gpu_check.sh sets
FASTDDPM_TEST_DEVICE=cuda and the same tests run the compiled kernels on CUDA tensors.
"""

import os

DEVICE = os.environ.get("FASTDDPM_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
else:
    os.environ.pop("TRITON_INTERPRET", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from fastddpm import kernels as K  # noqa: E402

if DEVICE == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("FASTDDPM_TEST_DEVICE=cuda but torch sees no CUDA device")

# CPU: the Triton kernels (interpreted) and the torch twin; CUDA: the compiled kernels.
IMPLS = ("triton", "torch") if DEVICE == "cpu" else ("triton",)


@pytest.fixture
def device():
    return torch.device(DEVICE)


@pytest.fixture(params=IMPLS)
def impl(request):
    """Run the test body with CPU tensors routed to the named implementation."""
    if DEVICE == "cpu":
        with K.cpu_backend(request.param):
            yield request.param
    else:
        yield request.param


def pytest_collection_modifyitems(config, items):
    if DEVICE == "cuda":
        return
    skip = pytest.mark.skip(reason="needs CUDA: run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def procs():
    """Child processes started with SIGINT and SIGTERM at their defaults, waited on with bounds,
    killed and reaped with everything they started when the test ends (tests/procs.py)."""
    from procs import Procs

    p = Procs()
    try:
        yield p
    finally:
        p.close()
