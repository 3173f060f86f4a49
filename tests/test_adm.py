"""OpenAI's ADM / improved-diffusion checkpoints and learned Σ, against OpenAI's own code.

guided-diffusion-sdk (PyPI) packages OpenAI's guided_diffusion: its UNetModel is the network
fastddpm.models.adm must equal with the same weights, and its GaussianDiffusion / SpacedDiffusion
the chains the fused step must equal when fed the same noise (its p_sample draws with
th.randn_like: here that call returns the noise fastddpm addresses by (seed, stream, t)).
diffusers' DDPMScheduler(variance_type="learned_range") is the other reference.
"""

import json
import pickle
from unittest import mock

import numpy as np
import pytest
import torch

import fastddpm as F
from fastddpm import kernels as K
from fastddpm import reference as R
from fastddpm.core.conventions import Conventions
from fastddpm.core.plan import Plan
from fastddpm.models.adm import ADM, ADMConfig, PRESETS, config_from_flags, parse_flags
from fastddpm.models.loading import read_scheduler_config
from fastddpm.pretrained import load_model

from guided_diffusion import gaussian_diffusion as gd  # the test extra installs guided-diffusion-sdk
from guided_diffusion.respace import SpacedDiffusion
from guided_diffusion.unet import UNetModel

BASE = dict(image_size=16, in_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=(2,), dropout=0.0,
            channel_mult=(1, 2))
# each option of OpenAI's UNetModel at least once: class-conditional or not, learned Σ, scale-shift
# norm, resampling residual blocks, legacy and new q/k/v order, a head count and a head width
OPTIONS = {
    "plain": dict(out_channels=3, num_heads=1),
    "learned-heads2-legacy": dict(out_channels=6, num_heads=2),
    "cond-scaleshift-updown-new-headwidth": dict(out_channels=6, num_classes=10, num_head_channels=16, use_scale_shift_norm=True,
                                                resblock_updown=True, use_new_attention_order=True),
    "heads4-upsample2-mult-fraction": dict(out_channels=6, num_heads=4, num_heads_upsample=2, use_scale_shift_norm=True,
                                           model_channels=64, channel_mult=(1, 1.5), attention_resolutions=(1, 2)),
}


def openai_net(**kw) -> UNetModel:
    """Their network with random weights everywhere (their zero-initialised output convs too:
    an output of zeros would prove nothing)."""
    torch.manual_seed(0)
    net = UNetModel(**{**BASE, **kw}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


def ours_of(theirs: UNetModel, **kw) -> ADM:
    net = ADM(ADMConfig(**{**BASE, **kw})).eval()
    net.load_state_dict(theirs.state_dict(), strict=True)
    return net


@pytest.mark.parametrize("name", OPTIONS)
def test_network_equals_openai_unet_with_their_weights(name):
    kw = OPTIONS[name]
    theirs = openai_net(**kw)
    ours = ours_of(theirs, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())  # their keys, in their order
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([0, 417, 999])
    y = torch.tensor([0, 4, 9]) if kw.get("num_classes") else None
    with torch.no_grad():
        want, got = theirs(x, t, y), ours(x, t, y)
    assert want.abs().max() > 0.05
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32: SDPA against their einsum softmax


def test_the_attention_order_and_heads_matter_so_the_equality_above_is_not_vacuous():
    kw = OPTIONS["learned-heads2-legacy"]
    theirs = openai_net(**kw)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        base = ours_of(theirs, **kw)(x, t)
        other_order = ours_of(theirs, **{**kw, "use_new_attention_order": True})(x, t)
        other_heads = ours_of(theirs, **{**kw, "num_heads": 4})(x, t)
    assert (base - other_order).abs().max() > 1e-3 and (base - other_heads).abs().max() > 1e-3


def test_channels_last_bf16_and_compile_free_paths_run():
    kw = OPTIONS["cond-scaleshift-updown-new-headwidth"]
    ours = ours_of(openai_net(**kw), **kw)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        want = ours(x, t, y)
        low = ours.to(torch.bfloat16, memory_format=torch.channels_last)(x.to(torch.bfloat16).contiguous(
            memory_format=torch.channels_last), t, y)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), want, rtol=0.05, atol=0.05)


# ------------------------------------------------------------------ chains against OpenAI's diffusion

SCHED = F.Schedule.linear()


def _openai_diffusion(plan: Plan, learned=True, rescale=False, schedule=SCHED):
    return SpacedDiffusion(use_timesteps=set(plan.timesteps), betas=schedule.betas.numpy().astype(np.float64),
                           model_mean_type=gd.ModelMeanType.EPSILON,
                           model_var_type=gd.ModelVarType.LEARNED_RANGE if learned else gd.ModelVarType.FIXED_LARGE,
                           loss_type=gd.LossType.MSE, rescale_timesteps=rescale)


def _learned(net: ADM, clip=True) -> ADM:
    net.conventions = Conventions(variance="learned", learned_sigma=True, clip=clip, clipped_eps=clip)  # OpenAI's, as load_model reads them
    return net


def _addressed(plan, seeds, shape):
    B = seeds.numel()
    prior = K.randn((B, *shape), seeds, torch.zeros(B, dtype=torch.int64), K.STREAM_PRIOR)
    noises = [K.randn((B, *shape), seeds, torch.full((B,), t), K.STREAM_REVERSE) for t in plan.timesteps]
    return prior, noises


@pytest.mark.parametrize("steps,spacing", [(10, "trailing"), (25, "linspace")])
def test_p_mean_variance_equals_openai_at_every_step_of_a_respaced_chain(steps, spacing):
    kw = OPTIONS["learned-heads2-legacy"]
    net = _learned(ours_of(openai_net(**kw), **kw))
    plan = Plan.build(SCHED, "ddpm", steps=steps, spacing=spacing, variance="learned", clip=True)
    diff = _openai_diffusion(plan)
    table, ts = plan.table("cpu"), plan.timesteps_on("cpu")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 16, 16, generator=g) * 1.5
    for k, t in enumerate(plan.timesteps):
        i = plan.K - 1 - k  # OpenAI's index into its respaced chain
        with torch.no_grad():
            out = net(x, torch.full((2,), t))
            theirs = diff.p_mean_variance(net, x, torch.full((2,), i), clip_denoised=True)
        kk = torch.full((2,), k)
        mean = K.sampler_step(x, out, kk, table, ts, noise=torch.zeros_like(x), clip=True, eps_term=False, learned=True)
        sigma = K.sampler_step(x, out, kk, table, ts, noise=torch.ones_like(x), clip=True, eps_term=False, learned=True) - mean
        torch.testing.assert_close(mean, theirs["mean"].float(), rtol=1e-5, atol=1e-5)
        if k < plan.K - 1:  # the last step adds no noise (OpenAI's nonzero_mask); its variance is only reported:
            torch.testing.assert_close(sigma, torch.exp(0.5 * theirs["log_variance"]).float(), rtol=1e-4, atol=1e-6)
        above = torch.full((2,), plan.timesteps[k - 1] if k else t)
        ref = R.learned_variance(out[:, 3:], torch.full((2,), t), torch.full((2,), plan.prev[k]), SCHED,
                                 above=above if k == plan.K - 1 else None)
        torch.testing.assert_close(ref, theirs["variance"].float(), rtol=1e-5, atol=1e-8)
        x = mean


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_respaced_ddpm_chain_equals_openai_p_sample_loop_fed_the_same_noise(backend):
    kw = OPTIONS["cond-scaleshift-updown-new-headwidth"]
    net = _learned(ours_of(openai_net(**kw), **kw))
    net.config = net.config  # (a dataclass: Sampler reads sample_size, in_channels, num_classes, null_label)
    seeds, labels = torch.tensor([0, 7, -3]), torch.tensor([1, 5, 9])
    plan = Plan.build(SCHED, "ddpm", steps=8, variance="learned", clip=True)
    prior, noises = _addressed(plan, seeds, (3, 16, 16))
    it = iter(noises)
    with mock.patch.object(gd.th, "randn_like", lambda x: next(it)), torch.no_grad():
        want = _openai_diffusion(plan).p_sample_loop(net, (3, 3, 16, 16), noise=prior, clip_denoised=True,
                                                     model_kwargs={"y": labels}, progress=False)
    with K.cpu_backend(backend):
        got = F.Sampler(net, SCHED, method="ddpm", steps=8, compile=False, progress=False).run(seeds=seeds, labels=labels)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)
    ref = R.sample(net, SCHED, seeds, (3, 16, 16), "ddpm", labels=labels, steps=8, variance="learned", clip=True)
    torch.testing.assert_close(ref, want.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_chain_equals_openai_ddim_sample_loop_using_the_eps_half_only(eta):
    kw = OPTIONS["learned-heads2-legacy"]
    net = _learned(ours_of(openai_net(**kw), **kw))
    seeds = torch.tensor([1, 2])
    plan = Plan.build(SCHED, "ddim", steps=6, eta=eta, clip=True)
    prior, noises = _addressed(plan, seeds, (3, 16, 16))
    it = iter(noises)
    with mock.patch.object(gd.th, "randn_like", lambda x: next(it)), torch.no_grad():
        want = _openai_diffusion(plan).ddim_sample_loop(net, (2, 3, 16, 16), noise=prior, clip_denoised=True, eta=eta,
                                                        progress=False)
    got = F.Sampler(net, SCHED, method="ddim", steps=6, eta=eta, compile=False, progress=False).run(seeds=seeds)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)


def test_improved_diffusion_rescaled_timesteps_and_cosine_schedule_from_its_flags(tmp_path):
    # improved-diffusion's defaults: rescale_timesteps=True (the network sees t·1000/T), T = 4000 here
    # (improved-diffusion has no --channel_mult: 32×32 is (1, 2, 2, 2))
    flags = ("--codebase improved-diffusion --image_size 32 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8 "
             "--learn_sigma True --diffusion_steps 400 --noise_schedule cosine")
    f = parse_flags(flags)
    cfg = config_from_flags(f)
    assert cfg.timestep_scale == 1000 / 400 and cfg.out_channels == 6 and cfg.attention_resolutions == (4,)
    theirs = openai_net(image_size=32, channel_mult=(1, 2, 2, 2), attention_resolutions=(4,), out_channels=6, num_heads=4,
                        use_scale_shift_norm=True)
    path = tmp_path / "run.pt"
    torch.save(theirs.state_dict(), path)
    net, schedule, info = load_model(str(path), flags=flags)
    assert info["kind"] == "openai" and schedule.T == 400 and net.conventions.learned_sigma
    assert net.conventions.variance == "learned" and net.conventions.clip is True
    want_betas = gd.get_named_beta_schedule("cosine", 400)
    torch.testing.assert_close(schedule.betas, torch.from_numpy(want_betas), rtol=0, atol=0)
    seeds = torch.tensor([4, 5])
    plan = Plan.build(schedule, "ddpm", steps=5, variance="learned", clip=True)
    prior, noises = _addressed(plan, seeds, (3, 32, 32))
    it = iter(noises)
    diff = _openai_diffusion(plan, rescale=True, schedule=schedule)
    with mock.patch.object(gd.th, "randn_like", lambda x: next(it)), torch.no_grad():
        want = diff.p_sample_loop(theirs, (2, 3, 32, 32), noise=prior, clip_denoised=True, progress=False)
    got = F.Sampler(net, schedule, method="ddpm", steps=5, compile=False, progress=False).run(seeds=seeds)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)


def test_learned_range_chain_equals_diffusers_ddpm_scheduler(monkeypatch):
    import diffusers
    from diffusers.schedulers import scheduling_ddpm

    kw = OPTIONS["learned-heads2-legacy"]
    net = _learned(ours_of(openai_net(**kw), **kw), clip=False)
    schedule, conv = read_scheduler_config({"_class_name": "DDPMScheduler", "variance_type": "learned_range",
                                                          "clip_sample": False, "timestep_spacing": "leading"})
    assert (conv.variance, conv.learned_sigma) == ("learned", True)
    net.conventions = conv
    sc = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False, timestep_spacing="leading")
    sc.set_timesteps(10)
    seeds = torch.tensor([0, 1])
    plan = Plan.build(schedule, "ddpm", steps=10, spacing="leading", variance="learned")
    assert list(plan.timesteps) == [int(t) for t in sc.timesteps]
    prior, noises = _addressed(plan, seeds, (3, 16, 16))
    x = prior
    for t, z in zip(plan.timesteps, noises):
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, _z=z, **k: _z)
        with torch.no_grad():
            x = sc.step(net(x, torch.full((2,), t)), t, x).prev_sample
    got = F.Sampler(net, schedule, method="ddpm", steps=10, spacing="leading", compile=False, progress=False).run(seeds=seeds)
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)


def test_guided_learned_step_combines_the_eps_halves_and_takes_the_conditional_variance():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g)
    cond, uncond = torch.randn(2, 6, 8, 8, generator=g), torch.randn(2, 6, 8, 8, generator=g)
    cond[:, 3:], uncond[:, 3:] = cond[:, 3:].tanh(), uncond[:, 3:].tanh()
    plan = Plan.build(SCHED, "ddpm", steps=10, variance="learned", guidance=3.0)
    k, z = torch.full((2,), 2), torch.randn(2, 3, 8, 8, generator=g)
    for backend in ("torch", "triton"):
        with K.cpu_backend(backend):
            got = K.sampler_step(x, cond, k, plan.table("cpu"), plan.timesteps_on("cpu"), noise=z, eps_term=False,
                                 eps_uncond=uncond, learned=True)
        eps = uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3])
        t, s = torch.full((2,), plan.timesteps[2]), torch.full((2,), plan.prev[2])
        want = R.ddpm_step(x, eps, t, s, SCHED, z, "learned", v=cond[:, 3:])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ files, flags, presets and bad input


def test_presets_parse_into_the_published_networks():
    # the figures OpenAI's READMEs state: 64x64 ADM 192 channels, head width 64, new attention order ...
    c = config_from_flags(parse_flags("64x64_diffusion"))
    assert (c.model_channels, c.num_head_channels, c.use_new_attention_order, c.num_classes, c.out_channels) == (192, 64, True,
                                                                                                             1000, 6)
    assert c.attention_resolutions == (2, 4, 8) and c.channel_mult == (1, 2, 3, 4) and c.timestep_scale == 1.0
    c = config_from_flags(parse_flags("cifar10_uncond_50M_500K"))
    assert (c.image_size, c.channel_mult, c.num_heads, c.timestep_scale, c.num_classes) == (32, (1, 2, 2, 2), 4, 0.25, None)
    assert config_from_flags(parse_flags("512x512_diffusion")).channel_mult == (0.5, 1, 1, 2, 2, 4, 4)
    assert set(PRESETS) >= {"64x64_diffusion", "128x128_diffusion", "256x256_diffusion", "256x256_diffusion_uncond",
                            "lsun_bedroom", "lsun_cat", "lsun_horse", "cifar10_uncond_50M_500K", "imagenet64_uncond_100M_1500K"}


def _tiny_flags():
    return ("--image_size 16 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8 --channel_mult 1,2 "
            "--learn_sigma True --num_heads 2 --use_scale_shift_norm False --class_cond True")


def test_an_openai_pt_loads_samples_and_generates_with_its_flags_recorded(tmp_path):
    theirs = openai_net(**{**OPTIONS["learned-heads2-legacy"], "num_classes": 1000})
    path = tmp_path / "adm.pt"
    torch.save(theirs.state_dict(), path)
    net, schedule, info = load_model(str(path), flags=_tiny_flags())
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([3, 999])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, y), theirs(x, t, y), rtol=1e-5, atol=1e-5)
    assert info["flags"]["learn_sigma"] is True and net.conventions.sources["learned_sigma"].startswith("adm.pt")
    from fastddpm.generate import main

    m = main(["--model", str(path), "--model-flags", _tiny_flags(), "--n", "2", "--out", str(tmp_path / "out"), "--steps", "4",
              "--labels", "5", "--batch", "2", "--device", "cpu", "--no-progress"])
    assert m["complete"] and m["config"]["model_flags"]["num_channels"] == 32
    assert m["config"]["conventions"]["variance"]["value"] == "learned"
    # the hash covers the flags: the same weights read under other heads are another model
    _, _, other = load_model(str(path), flags=_tiny_flags().replace("--num_heads 2", "--num_heads 4"))
    assert other["hash"] != info["hash"]


def test_bad_openai_files_and_flags_get_clear_errors(tmp_path):
    theirs = openai_net(**OPTIONS["learned-heads2-legacy"])
    path = tmp_path / "adm.pt"
    torch.save(theirs.state_dict(), path)
    with pytest.raises(ValueError, match="not one of the published ones.*--model-flags"):
        load_model(str(path))  # no flags, and not a published name
    with pytest.raises(ValueError, match=r"time_embed.0.weight is \(128, 32\) in the file, \(256, 64\) in the network"):
        load_model(str(path), flags=_tiny_flags().replace("--num_channels 32", "--num_channels 64"))
    with pytest.raises(ValueError, match="label_emb.weight"):  # class_cond the file was not trained with
        load_model(str(path), flags=_tiny_flags())
    with pytest.raises(ValueError, match="--num_chanels is not a flag"):
        load_model(str(path), flags="--num_chanels 32")
    with pytest.raises(ValueError, match="--learn_sigma expects a boolean"):
        load_model(str(path), flags="--learn_sigma maybe")
    with pytest.raises(ValueError, match="timestep_respacing 250 is a sampling choice"):
        load_model(str(path), flags=_tiny_flags().replace("--class_cond True", "--timestep_respacing 250"))
    published = tmp_path / "64x64_diffusion.pt"  # a published name: its preset's flags, which this file does not fit
    torch.save(theirs.state_dict(), published)
    with pytest.raises(ValueError, match="does not fit these flags"):
        load_model(str(published))
    # a pickle of an object is never unpickled, a list is not a state dict
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(mock.sentinel, fh)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model(str(evil))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, expected a state dict"):
        load_model(str(tmp_path / "list.pt"))
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither an OpenAI"):
        load_model(str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="flags: OpenAI's flags describe"):
        load_model("digits", flags=_tiny_flags())


def test_a_learned_sigma_model_refuses_a_variance_option_and_guidance_without_a_null_label(tmp_path):
    theirs = openai_net(**{**OPTIONS["learned-heads2-legacy"], "num_classes": 1000})
    torch.save(theirs.state_dict(), tmp_path / "adm.pt")
    net, schedule, _ = load_model(str(tmp_path / "adm.pt"), flags=_tiny_flags())
    with pytest.raises(ValueError, match="variance: this model learns its variance"):
        F.Sampler(net, schedule, variance="small", compile=False)
    with pytest.raises(ValueError, match="guidance: classifier-free guidance needs .* null label"):
        F.Sampler(net, schedule, guidance=2.0, compile=False)
    with pytest.raises(ValueError, match="variance: 'learned' samples with the model's own variance"):
        F.Sampler(F.pretrained.load_model("digits")[0], variance="learned", compile=False)
    with pytest.raises(ValueError, match="another architecture than diffusers' UNet2DModel"):
        F.pretrained.export_diffusers(str(tmp_path / "adm.pt"), tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_step_refuses_an_output_flag_and_table_that_disagree():
    x = torch.randn(2, 3, 8, 8)
    plan = Plan.build(SCHED, "ddpm", steps=4, variance="learned")
    plain = Plan.build(SCHED, "ddpm", steps=4)
    out2 = torch.randn(2, 6, 8, 8)
    k = torch.zeros(2, dtype=torch.int64)
    args = dict(seeds=0, eps_term=False)
    with pytest.raises(ValueError, match="eps_hat: has 6 channels.*learned=True"):
        K.sampler_step(x, out2, k, plan.table("cpu"), plan.timesteps_on("cpu"), **args)
    with pytest.raises(ValueError, match="learned: True, but eps_hat has 3 channels"):
        K.sampler_step(x, x, k, plan.table("cpu"), plan.timesteps_on("cpu"), learned=True, **args)
    with pytest.raises(ValueError, match="learned: True, but this table's noisy rows have no learned-range columns"):
        K.sampler_step(x, out2, k, plain.table("cpu"), plain.timesteps_on("cpu"), learned=True, **args)
    with pytest.raises(ValueError, match="pass the model's whole output with learned=True"):
        K.sampler_step(x, out2, k, plan.table("cpu"), plan.timesteps_on("cpu"), learned=False, **args)


# ------------------------------------------------------------------ diffusers' older DDPM folders


def _folder(path, scheduler: dict, where="scheduler"):
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                 norm_num_groups=8)
    unet.save_pretrained(str(path / "unet"))
    target = path / where / "scheduler_config.json" if where else path / "scheduler_config.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"_class_name": "DDPMScheduler", **scheduler}))
    return path


def test_predict_epsilon_false_is_an_x0_model_and_a_root_legacy_config_is_read(tmp_path):
    _folder(tmp_path / "a", {"predict_epsilon": False}, where=None)
    _, _, info = load_model(str(tmp_path / "a"))
    assert info["conventions"].prediction == "sample"
    assert info["conventions"].sources["prediction"] == "scheduler_config.json: predict_epsilon"
    _folder(tmp_path / "b", {"predict_epsilon": True, "variance_type": "fixed_small"})
    _, _, info = load_model(str(tmp_path / "b"))
    assert (info["conventions"].prediction, info["conventions"].variance) == ("epsilon", "small")


def test_older_configs_that_contradict_themselves_are_refused_by_name(tmp_path):
    _folder(tmp_path / "a", {"predict_epsilon": False, "prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="predict_epsilon=False: contradicts prediction_type='epsilon'"):
        load_model(str(tmp_path / "a"))
    folder = _folder(tmp_path / "b", {"variance_type": "fixed_small"})
    (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "variance_type": "fixed_large"}))
    with pytest.raises(ValueError, match="two scheduler configs that disagree"):
        load_model(str(folder))
    _folder(tmp_path / "c", {"variance_type": "learned"})
    with pytest.raises(ValueError, match="variance_type='learned'.*disagree"):
        load_model(str(tmp_path / "c"))
    _folder(tmp_path / "d", {"variance_type": "learned_range"})  # a 1-channel UNet cannot carry a variance half
    with pytest.raises(ValueError, match="out_channels=1 and in_channels=1, but its scheduler config learns the variance"):
        load_model(str(tmp_path / "d"))


@pytest.mark.slow
def test_compiled_sampler_on_a_learned_sigma_adm_equals_eager():
    # torch.compile(fullgraph) of the step: the ADM network and the learned-variance update traced together
    kw = OPTIONS["cond-scaleshift-updown-new-headwidth"]
    net = _learned(ours_of(openai_net(**kw), **kw))
    seeds, labels = torch.tensor([0, 1]), torch.tensor([2, 3])
    eager = F.Sampler(net, SCHED, method="ddpm", steps=4, compile=False, progress=False).run(seeds=seeds, labels=labels)
    compiled = F.Sampler(net, SCHED, method="ddpm", steps=4, compile=True, progress=False).run(seeds=seeds, labels=labels)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
