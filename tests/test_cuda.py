"""What only a GPU can check: the CUDA-graphed, compiled, bf16 Sampler. Run by
benchmarks/gpu_check.sh (FASTDDPM_TEST_DEVICE=cuda); skipped, and said so, elsewhere."""

import pytest
import torch

from fastddpm import Sampler, Schedule, UNet, UNetConfig, reference

pytestmark = pytest.mark.cuda
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    cfg = UNetConfig(sample_size=32, base_channels=32, channel_mult=(1, 2, 2), layers_per_block=1, attn_resolutions=(16,))
    return UNet(cfg).cuda().eval()


def test_graphed_fp32_sampler_matches_reference(net):
    sched = Schedule.linear(T=20, beta_start=1e-3, beta_end=0.2)
    s = Sampler(net, sched, dtype=torch.float32, progress=False)
    got = s.run(batch=4, seed=0)
    ref = reference.sample(net, sched, torch.arange(4, device="cuda"), SHAPE)
    # TF32 convolutions may differ from the eager reference's choice: a loose fp32 bound
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


def test_graphed_bf16_sampler_matches_eager_bf16(net):
    sched = Schedule.linear()
    fast = Sampler(net, sched, progress=False).run(batch=8, seed=3, stop_after=10)
    slow = Sampler(net, sched, compile=False, cuda_graph=False, progress=False).run(batch=8, seed=3, stop_after=10)
    torch.testing.assert_close(fast, slow, rtol=2e-2, atol=2e-2)  # bf16 U-Net, two compilations


def test_no_host_sync_inside_the_loop(net):
    s = Sampler(net, Schedule.linear(), progress=False)
    s.run(batch=4, seed=0, stop_after=2)  # compile and capture
    b = s._buffers[4]
    before = int(b.k[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            b.steps[False]()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert int(b.k[0]) == before + 5  # each replay took one step and advanced its index itself


def test_seed_contract_on_gpu(net):
    s = Sampler(net, Schedule.linear(T=10, beta_start=1e-3, beta_end=0.2), progress=False)
    a = s.run(batch=8, seed=0)
    torch.testing.assert_close(s.run(batch=8, seed=0, max_batch=3), a, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(s.run(batch=8, seed=0), a, rtol=0, atol=0)


@pytest.mark.parametrize("method,steps,options", [
    ("ddim", 20, {}), ("dpm++2m", 10, {}), ("sde-dpm++2m", 10, {}), ("dpm++3m", 10, {}), ("sde-dpm++3m", 10, {}),
    ("unipc", 10, dict(order=3)), ("unipc", 6, dict(order=2, solver_type="bh1")), ("ipndm", 10, dict(order=4)), ("ipndm", 10, {})])
def test_graphed_fewer_step_samplers_match_their_reference(net, method, steps, options):
    # the multistep ones turn their history ring inside the graph: a replay reads no host state
    sched = Schedule.linear()
    got = Sampler(net, sched, method=method, steps=steps, dtype=torch.float32, progress=False, **options).run(batch=4, seed=0)
    ref = reference.sample(net, sched, torch.arange(4, device="cuda"), SHAPE, method, steps=steps, **options)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)  # TF32 convolutions, as above


@pytest.mark.parametrize("method,steps", [("ddpm", 10), ("ddim", 10), ("dpm++2m", 10)])
def test_graphed_learned_sigma_adm_matches_its_reference(method, steps):
    # an OpenAI ADM network with learned Σ (2C outputs): the compiled, graphed step reads v in place
    from fastddpm.core.conventions import Conventions
    from fastddpm.models.adm import ADM, ADMConfig

    torch.manual_seed(0)
    adm = ADM(ADMConfig(image_size=32, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(2,),
                        channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True))
    with torch.no_grad():
        for p in adm.parameters():
            p.normal_(0, 0.05)
    adm = adm.cuda().eval()
    adm.conventions = Conventions(variance="learned", learned_sigma=True, clip=True, clipped_eps=True)
    sched = Schedule.linear()
    got = Sampler(adm, sched, method=method, steps=steps, dtype=torch.float32, progress=False).run(batch=4, seed=0)
    ref = reference.sample(adm, sched, torch.arange(4, device="cuda"), SHAPE, method, steps=steps, clip=method != "dpm++2m",
                           **({"variance": "learned"} if method == "ddpm" else {"clipped_eps": True} if method == "ddim" else {}))
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)  # TF32 convolutions, as above
