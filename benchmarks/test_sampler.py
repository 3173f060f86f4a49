"""One sampler step of the CIFAR-10 U-Net at batch 1 and 1024: fastddpm's graphed step
and the graphed U-Net alone (the floor)."""

import pytest
import torch

from fastddpm import Sampler, Schedule, UNet, UNetConfig
from fastddpm.bench.suites import graphed_unet


@pytest.fixture(scope="module")
def sampler():
    torch.manual_seed(0)
    return Sampler(UNet(UNetConfig.cifar10()).cuda().eval(), Schedule.linear(), progress=False)


@pytest.mark.parametrize("batch", [1, 1024])
def test_sampler_step(cuda_timed, sampler, batch):
    sampler.run(batch=batch, stop_after=2)  # compile and capture
    b = sampler._buffers[batch]
    with torch.inference_mode():
        cuda_timed(b.step, batch=batch, note="one graph replay: U-Net + fused reverse step")


@pytest.mark.parametrize("batch", [1, 1024])
def test_unet_alone(cuda_timed, sampler, batch):
    x = torch.randn(batch, 3, 32, 32, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    t = torch.full((batch,), 500, device="cuda")
    with torch.inference_mode():
        replay, _ = graphed_unet(sampler.model, x, t)
        cuda_timed(replay, batch=batch, note="the floor: graphed U-Net alone")
