"""denoising-diffusion-pytorch's Trainer files (lucidrains), against the package's own code.

The package imports torchvision and pytorch-fid at module level (for its Trainer, data and FID);
PyPI's torchvision does not load with the CPU torch these machines run, and nothing may pull
another torch, so the README installs the package with --no-deps and these tests stand in
empty modules for `torchvision`, `torchvision.transforms`, `torchvision.utils` and
`pytorch_fid`'s two modules: the Unet and GaussianDiffusion used here never call them.
fastddpm itself never imports the package (or torchvision).
"""

import sys
import types
from unittest import mock

import pytest
import torch


def _stand_ins():
    made = {}
    for name in ("torchvision", "torchvision.transforms", "torchvision.utils", "pytorch_fid", "pytorch_fid.fid_score",
                 "pytorch_fid.inception"):
        if name not in sys.modules:
            made[name] = sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]
    sys.modules["pytorch_fid.fid_score"].calculate_frechet_distance = None
    sys.modules["pytorch_fid.inception"].InceptionV3 = None
    return made


_made = _stand_ins()
import denoising_diffusion_pytorch as ddp  # noqa: E402
from denoising_diffusion_pytorch.version import __version__  # noqa: E402
from ema_pytorch import EMA  # noqa: E402

for _name in _made:  # the package keeps its references; nothing else sees the stand-ins
    del sys.modules[_name]

import fastddpm as F  # noqa: E402
from fastddpm import kernels as K  # noqa: E402
from fastddpm.pretrained import load_model  # noqa: E402

T = 60
SIZE = 16


def _run(tmp_path, objective="pred_v", beta_schedule="sigmoid", sampling_timesteps=None, eta=0.0):
    """A tiny Unet in its GaussianDiffusion, an EMA whose weights differ from the online ones,
    saved as its Trainer.save writes model-N.pt."""
    torch.manual_seed(0)
    unet = ddp.Unet(dim=16, dim_mults=(1, 2, 2), attn_heads=2, attn_dim_head=8, full_attn=(False, False, True))
    diffusion = ddp.GaussianDiffusion(unet, image_size=SIZE, timesteps=T, objective=objective, beta_schedule=beta_schedule,
                                      sampling_timesteps=sampling_timesteps, ddim_sampling_eta=eta)
    ema = EMA(diffusion, beta=0.995, update_every=1)
    with torch.no_grad():
        for p in diffusion.parameters():
            p.normal_(0, 0.1)
        for p in ema.ema_model.parameters():
            p.normal_(0, 0.1)
    data = {"step": 7, "model": diffusion.state_dict(), "opt": {}, "ema": ema.state_dict(), "scaler": None,
            "version": __version__}
    path = tmp_path / "model-7.pt"
    torch.save(data, str(path))
    return path, diffusion, ema.ema_model.eval()


def test_the_ema_unet_loads_and_predicts_as_the_package(tmp_path):
    path, online, ema = _run(tmp_path)
    net, schedule, info = load_model(str(path), flags=f"--image_size {SIZE}")
    assert info["kind"] == "denoising-diffusion-pytorch" and info["step"] == 7
    # the schedule is the file's own betas (its sigmoid schedule, not diffusers')
    torch.testing.assert_close(schedule.betas, ema.betas.double(), rtol=0, atol=0)
    assert net.conventions.prediction == "v" and "default objective (pred_v)" in net.conventions.sources["prediction"]
    x, t = torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 31, 59])
    with torch.no_grad():
        want, online_out = ema.model(x, t), online.model(x, t)
        got = net(x, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - online_out).abs().max() > 0.1  # the EMA weights, not the online ones


def _same_noise(prior, noises):
    """torch.randn (the prior) and torch.randn_like (each step's z), as the package draws them, answering
    the noise fastddpm addresses."""
    it = iter(noises)
    return mock.patch.multiple(torch, randn=lambda *a, **k: prior.clone(), randn_like=lambda x, *a, **k: next(it))


@pytest.mark.parametrize("objective", ["pred_v", "pred_noise", "pred_x0"])
def test_ddpm_chain_equals_its_p_sample_loop(tmp_path, objective):
    path, _, ema = _run(tmp_path, objective=objective, beta_schedule="sigmoid" if objective != "pred_x0" else "cosine")
    net, schedule, _ = load_model(str(path), flags=f"--image_size {SIZE} --objective {objective}")
    seeds = torch.tensor([0, 5])
    prior = K.randn((2, 3, SIZE, SIZE), seeds, torch.zeros(2, dtype=torch.int64), K.STREAM_PRIOR)
    noises = [K.randn(prior.shape, seeds, torch.full((2,), t), K.STREAM_REVERSE) for t in range(T - 1, 0, -1)]
    with _same_noise(prior, noises):
        want = ema.p_sample_loop((2, 3, SIZE, SIZE))  # in [0, 1] (auto_normalize)
    got = F.Sampler(net, schedule, compile=False, progress=False).run(seeds=seeds)  # ddpm, all T, the model's conventions
    torch.testing.assert_close(got * 0.5 + 0.5, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_chain_equals_its_ddim_sample(tmp_path, eta):
    path, _, ema = _run(tmp_path, sampling_timesteps=10, eta=eta)
    net, schedule, _ = load_model(str(path), flags=f"--image_size {SIZE}")
    seeds = torch.tensor([2, 3])
    sampler = F.Sampler(net, schedule, method="ddim", steps=10, eta=eta, compile=False, progress=False)
    # its grid, linspace(−1, T − 1, S + 1) truncated, is fastddpm's trailing one here
    times = list(reversed(torch.linspace(-1, T - 1, steps=11).int().tolist()))[:-1]
    assert list(sampler.plan.timesteps) == times
    prior = K.randn((2, 3, SIZE, SIZE), seeds, torch.zeros(2, dtype=torch.int64), K.STREAM_PRIOR)
    noises = [K.randn(prior.shape, seeds, torch.full((2,), t), K.STREAM_REVERSE) for t in times]
    with _same_noise(prior, noises):
        want = ema.ddim_sample((2, 3, SIZE, SIZE))
    got = sampler.run(seeds=seeds)
    torch.testing.assert_close(got * 0.5 + 0.5, want, rtol=1e-4, atol=1e-4)


def test_generate_reads_it_and_records_where_the_objective_came_from(tmp_path):
    path, _, _ = _run(tmp_path)
    from fastddpm.generate import main

    m = main(["--model", str(path), "--model-flags", f"--image_size {SIZE}", "--n", "2", "--out", str(tmp_path / "out"),
              "--method", "ddim", "--steps", "5", "--batch", "2", "--device", "cpu", "--no-progress"])
    assert m["complete"] and m["config"]["model_flags"]["objective"] == "pred_v"
    assert "default objective" in m["config"]["conventions"]["prediction"]["from"]
    m2 = main(["--model", str(path), "--model-flags", f"--image_size {SIZE}", "--prediction", "epsilon", "--n", "2",
               "--out", str(tmp_path / "out2"), "--method", "ddim", "--steps", "5", "--batch", "2", "--device", "cpu",
               "--no-progress"])
    assert m2["config"]["conventions"]["prediction"] == {"value": "epsilon", "from": "given"}


def test_bad_lucidrains_files_get_clear_errors(tmp_path):
    path, _, _ = _run(tmp_path)
    with pytest.raises(ValueError, match="does not record its image size"):
        load_model(str(path))
    with pytest.raises(ValueError, match="--objective expects one of"):
        load_model(str(path), flags=f"--image_size {SIZE} --objective pred_eps")
    with pytest.raises(ValueError, match="--dim is not read"):
        load_model(str(path), flags=f"--image_size {SIZE} --dim 64")
    with pytest.raises(ValueError, match="auto_normalize False"):
        load_model(str(path), flags=f"--image_size {SIZE} --auto_normalize False")
    data = torch.load(str(path), weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({**data, "version": "0.27.1"}, str(old))
    with pytest.raises(ValueError, match="written by denoising-diffusion-pytorch 0.27.1; fastddpm reads the 2.x"):
        load_model(str(old), flags=f"--image_size {SIZE}")
    selfcond = tmp_path / "selfcond.pt"
    torch.manual_seed(0)
    diffusion = ddp.GaussianDiffusion(ddp.Unet(dim=16, dim_mults=(1, 2), self_condition=True), image_size=SIZE, timesteps=T)
    torch.save({**data, "ema": EMA(diffusion).state_dict()}, str(selfcond))
    with pytest.raises(ValueError, match="self-conditioned"):
        load_model(str(selfcond), flags=f"--image_size {SIZE}")
    noema = tmp_path / "noema.pt"
    torch.save({**data, "ema": {}}, str(noema))
    with pytest.raises(ValueError, match="no EMA weights"):
        load_model(str(noema), flags=f"--image_size {SIZE}")
