"""The kernels, fused vs eager vs compiled reference, as in `python -m fastddpm.bench`."""

import pytest
import torch

from fastddpm import Schedule
from fastddpm.bench.suites import kernel_cases
from fastddpm.bench.timing import kernel_bytes

SHAPES = [(1024, 3, 32, 32), (128, 3, 256, 256)]
OPS = ["q_sample", "reverse_step", "loss"]


@pytest.mark.parametrize("shape", SHAPES, ids=["cifar", "256"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", ["fused", "eager", "compiled"])
def test_kernel(cuda_timed, shape, dtype, op, impl):
    cases = dict(kernel_cases(shape, dtype, torch.device("cuda"), Schedule.linear()))
    cuda_timed(cases[op][impl], bytes=kernel_bytes(op, shape, dtype), shape=list(shape), dtype=str(dtype))
