"""torch.compile(fullgraph=True) over steps that call the ops: no graph break, and no
recompilation when the timesteps and seeds change (they are tensors, never constants)."""

import pytest
import torch
from helpers import SCHEDULE, rand_image
from torch._dynamo.testing import CompileCounterWithBackend

from fastddpm import kernels as K


def _model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 3, 3, padding=1)).to(device)


def train_step(model, x0, t, seeds, table):
    x_t = K.q_sample(x0, t, table, seeds=seeds)
    return K.eps_mse_loss(model(x_t), t, seeds=seeds)


def sample_step(model, x, x_in, t, seeds, table):
    eps_hat = model(x_in)
    K.reverse_step(x, eps_hat, t, table, seeds=seeds, out=x, out_lowp=x_in)


@pytest.mark.slow
def test_train_step_compiles_whole_and_once(impl, device):
    torch._dynamo.reset()
    model = _model(device)
    table = SCHEDULE.table(device=device)
    counter = CompileCounterWithBackend("inductor")
    step = torch.compile(train_step, backend=counter, fullgraph=True)
    x0 = rand_image((4, 3, 8, 8), torch.float32, device, 1)
    for i in range(3):
        t = torch.randint(0, SCHEDULE.T, (4,), generator=torch.Generator().manual_seed(i)).to(device)
        seeds = torch.arange(4, device=device) + 10 * i
        model.zero_grad()
        loss = step(model, x0, t, seeds, table)
        loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ref = train_step(model, x0, t, seeds, table)
        ref.backward()
        torch.testing.assert_close(loss, ref)
        for g, p in zip(got, model.parameters()):
            torch.testing.assert_close(g, p.grad)
    assert counter.frame_count == 1  # one graph: no break, no recompilation


@pytest.mark.slow
def test_sampling_step_compiles_whole_and_once(impl, device):
    torch._dynamo.reset()
    model = _model(device)
    table = SCHEDULE.table("small", device)
    counter = CompileCounterWithBackend("inductor")
    step = torch.compile(sample_step, backend=counter, fullgraph=True)
    x = rand_image((2, 3, 8, 8), torch.float32, device, 2)
    x_ref = x.clone()
    x_in = x.clone().contiguous(memory_format=torch.channels_last)
    t = torch.full((2,), SCHEDULE.T - 1, device=device)
    seeds = torch.tensor([3, 4], device=device)
    with torch.inference_mode():
        for _ in range(4):  # t changes in place, as in a CUDA graph's input buffer
            step(model, x, x_in, t, seeds, table)
            K.reverse_step(x_ref, model(x_ref), t, table, seeds=seeds, out=x_ref)
            t -= 1
    torch.testing.assert_close(x, x_ref)
    torch.testing.assert_close(x_in, x_ref)
    assert counter.frame_count == 1
