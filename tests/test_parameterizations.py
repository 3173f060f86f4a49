"""Every parameterization (ε, v, x₀) and zero-terminal-SNR schedules: whole chains in float64
against diffusers' DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler with their
`prediction_type`, variance types, clipping and `rescale_betas_zero_snr`; the fused step
(both CPU backends) against the reference; one model written in the three
parameterizations samples the same images; bad input."""

import pytest
import torch
from helpers import assert_fp32_chain


from fastddpm import Plan, Sampler, Schedule
from fastddpm import kernels as K
from fastddpm import reference as R
from fastddpm.core.conventions import Conventions

diffusers = pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_ddpm as ddpm_module  # noqa: E402
from test_samplers import diffusers_chain, follows_diffusers  # noqa: E402

SHAPE = (3, 6, 5)
SEEDS = torch.tensor([3, 11])
LINEAR, ZSNR = Schedule.linear(), Schedule.linear().rescale_zero_snr()
CONFIGS = [  # (method, options)
    ("ddpm", dict(variance="large")), ("ddpm", dict(variance="small")), ("ddpm", dict(variance="small", clip=True)),
    ("ddim", dict()), ("ddim", dict(eta=1.0)), ("ddim", dict(clip=True)), ("ddim", dict(eta=0.5, clip=True, clipped_eps=True)),
    ("dpm++2m", dict()), ("sde-dpm++2m", dict()), ("dpm++2m", dict(spacing="karras")), ("sde-dpm++2m", dict(spacing="karras")),
]


def config_id(c):
    return c[0] + "".join(f"-{k}={v}" for k, v in c[1].items())


def toy_x0(x, t, S):
    """A denoiser's x̂_0: the exact posterior mean for data N(0.3, 0.5²) plus a smooth,
    channel-mixing nonlinearity; finite at ᾱ = 0 (zero terminal SNR)."""
    a = S.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, 1, 1, 1)
    w = torch.tensor([[0.6, -0.3, 0.2], [0.1, 0.5, -0.4], [-0.2, 0.3, 0.7]], dtype=x.dtype, device=x.device)
    post = 0.3 + a.sqrt() * 0.25 * (x - a.sqrt() * 0.3) / (a * 0.25 + 1 - a)
    return post + 0.1 * torch.tanh(torch.einsum("oc,bchw->bohw", w, x)) * torch.cos(t.to(x.dtype) / 300).view(-1, 1, 1, 1)


def toy_model(prediction, S):
    """The same denoiser as an ε, v or x₀ model (Salimans & Ho's identities)."""

    def model(x, t):
        a = S.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, 1, 1, 1)
        al, sg = a.sqrt(), (1 - a).sqrt()
        x0 = toy_x0(x, t, S)
        eps = (x - al * x0) / sg
        return {"epsilon": eps, "v": al * eps - sg * x0, "sample": x0}[prediction]

    return model


def chain_in_diffusers(method, S, prediction, steps, monkeypatch, spacing="trailing", model=None, **options):
    """test_samplers.diffusers_chain on schedule S, for a model predicting `prediction` (this file's toy by default)."""
    return diffusers_chain(method, spacing, steps, SEEDS, monkeypatch, schedule=S, prediction=prediction,
                           model=model or toy_model(prediction, S), **options)


def reference_chain(method, S, prediction, steps, dtype=torch.float64, **options):
    return R.sample(toy_model(prediction, S), S, SEEDS, SHAPE, method, steps=steps, dtype=dtype, prediction=prediction, **options)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("prediction", ["v", "sample"])
def test_reference_chains_equal_diffusers(config, prediction, monkeypatch):
    method, options = config
    for steps in (1, 3, 10, 50):
        if not follows_diffusers(method, options.get("spacing", "trailing"), steps):
            continue  # diffusers' DDIM steps to t - T//N, not its next timestep (test_samplers.py)
        ours = reference_chain(method, LINEAR, prediction, steps, **options)
        theirs = chain_in_diffusers(method, LINEAR, prediction, steps, monkeypatch, **options)
        torch.testing.assert_close(ours, theirs, msg=lambda m: f"{steps} steps: {m}")


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 50])
def test_karras_timesteps_are_diffusers(steps):
    from fastddpm.core.plan import Method, timesteps

    for S in (LINEAR, Schedule.cosine(), Schedule.scaled_linear()):
        sc = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, trained_betas=S.betas.numpy())
        sc.set_timesteps(steps)
        m = Method("dpm++2m", steps, "karras").checked(S.T)
        assert timesteps(S.T, m, S.alphas_cumprod) == [int(v) for v in sc.timesteps]


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("method", ["dpm++2m", "sde-dpm++2m"])
def test_karras_chains_equal_diffusers(method, prediction, monkeypatch):
    for steps in (1, 3, 10, 25):
        ours = reference_chain(method, LINEAR, prediction, steps, spacing="karras")
        theirs = chain_in_diffusers(method, LINEAR, prediction, steps, monkeypatch, spacing="karras")
        torch.testing.assert_close(ours, theirs, msg=lambda m: f"{steps} steps: {m}")


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm++2m", "sde-dpm++2m"])
def test_zero_terminal_snr_with_v_equals_diffusers(method, monkeypatch):
    for steps in (1, 10, 50):
        if not follows_diffusers(method, "trailing", steps):
            continue
        ours = reference_chain(method, ZSNR, "v", steps)
        theirs = chain_in_diffusers(method, ZSNR, "v", steps, monkeypatch)
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs, msg=lambda m: f"{steps} steps: {m}")


def test_zero_snr_schedule_is_diffusers_rescale():
    theirs = diffusers.DDPMScheduler(rescale_betas_zero_snr=True).alphas_cumprod.double()
    assert ZSNR.zero_terminal_snr and float(ZSNR.alphas_cumprod[-1]) == 0.0
    torch.testing.assert_close(ZSNR.alphas_cumprod, theirs, rtol=1e-5, atol=1e-7)  # diffusers computes it in fp32
    torch.testing.assert_close(ZSNR.alphas_cumprod[0], LINEAR.alphas_cumprod[0])  # ᾱ_0 unchanged (Lin et al.)
    sl = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).betas.double()
    torch.testing.assert_close(Schedule.scaled_linear().betas, sl, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("prediction", ["v", "sample"])
def test_fused_sampler_equals_reference(config, prediction, backend):
    method, options = config
    S = ZSNR if prediction == "v" and method != "ddpm" else LINEAR  # zero SNR, where an ε model could not go
    exact = reference_chain(method, S, prediction, 10, **options)
    plain = reference_chain(method, S, prediction, 10, dtype=torch.float32, **options)
    with K.cpu_backend(backend):
        fast = Sampler(toy_model(prediction, S), S, method=method, steps=10, prediction=prediction, shape=SHAPE,
                       progress=False, **options).run(seeds=SEEDS)
    assert_fp32_chain(fast, exact, plain, steps=10)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm++2m"])
def test_one_model_in_three_parameterizations_samples_the_same_images(method):
    chains = [Sampler(toy_model(p, LINEAR), LINEAR, method=method, steps=20, prediction=p, shape=SHAPE, progress=False,
                      dtype=torch.float32).run(seeds=SEEDS) for p in ("epsilon", "v", "sample")]
    for c in chains[1:]:
        torch.testing.assert_close(c, chains[0], rtol=1e-4, atol=1e-4)


def test_standalone_kernel_rows_for_each_prediction():
    # kernels users: coef_table(prediction=...) gives x̂_0 = X0_X x - X0_EPS m for each parameterization
    a = LINEAR.alphas_cumprod
    x, eps = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    al, sg = a[t].sqrt().view(-1, 1, 1, 1), (1 - a[t]).sqrt().view(-1, 1, 1, 1)
    x0 = (x - sg * eps) / al
    for prediction, m in (("epsilon", eps), ("v", al * eps - sg * x0), ("sample", x0), ("v_prediction", al * eps - sg * x0)):
        rows = K.coef_table(a, prediction=prediction, dtype=torch.float64)[t]
        got = rows[:, 2].view(-1, 1, 1, 1) * x - rows[:, 3].view(-1, 1, 1, 1) * m
        torch.testing.assert_close(got, x0)


def test_conventions_fill_what_the_user_left_open():
    conv = Conventions(prediction="v", variance="small", clip=True, spacing="leading", offset=1,
                       sources={"prediction": "scheduler_config.json: prediction_type"})
    m, used = conv.resolve("ddpm", 10)
    assert (m.prediction, m.variance, m.clip, m.spacing, m.offset) == ("v", "small", True, "leading", 1)
    assert used["prediction"] == ("v", "scheduler_config.json: prediction_type")
    m, used = conv.resolve("dpm++2m", 10, prediction="epsilon", spacing="trailing")
    assert (m.prediction, m.variance, m.clip, m.offset) == ("epsilon", "large", False, 0) and used["prediction"][1] == "given"
    assert "does not apply" in used["clip"][1]


@pytest.mark.parametrize("bad, match", [
    (dict(prediction="x0"), "prediction: expected one of"),
    (dict(prediction="eps"), "prediction: expected one of"),
    (dict(prediction=None, schedule=ZSNR), "prediction: an ε-prediction model is undefined"),
    (dict(offset=-1, spacing="leading"), "offset: expected an int >= 0"),
    (dict(offset=1, spacing="trailing"), "offset: diffusers adds steps_offset to the 'leading' spacing only"),
    (dict(offset=1, spacing="leading", steps=1000), "spacing: 'leading' with steps=1000 and offset=1"),
])
def test_bad_input(bad, match):
    schedule = bad.pop("schedule", LINEAR)
    with pytest.raises(ValueError, match=match):
        Plan.build(schedule, "ddpm", **{"prediction": "epsilon", **{k: v for k, v in bad.items() if v is not None}})


# ------------------------------------------------------------------ a diffusers folder's conventions


def diffusers_folder(path, **scheduler):
    """A DDPMPipeline save_pretrained folder: a tiny UNet2DModel and a DDPMScheduler."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                 norm_num_groups=8)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**scheduler)).save_pretrained(str(path))
    return path


def test_a_v_prediction_folder_samples_as_its_pipeline_would_and_says_so(tmp_path, capsys):
    # the case: prediction_type=v_prediction, variance_type=fixed_small, clip_sample=True
    from fastddpm.generate import generate
    from fastddpm.pretrained import load_model

    folder = diffusers_folder(tmp_path / "pipe", prediction_type="v_prediction", variance_type="fixed_small", clip_sample=True)
    net, schedule, info = load_model(str(folder))
    conv = info["conventions"]
    assert (conv.prediction, conv.variance, conv.clip) == ("v", "small", True)
    assert conv.sources["prediction"] == "scheduler/scheduler_config.json: prediction_type"
    m = generate(str(folder), n=2, out=tmp_path / "out", method="ddpm", steps=5, spacing="trailing", batch=2, device="cpu")
    assert "prediction 'v' (scheduler/scheduler_config.json: prediction_type)" in capsys.readouterr().err
    assert {k: v["value"] for k, v in m["config"]["conventions"].items()} == dict(
        spacing="trailing", variance="small", clip=True, prediction="v", offset=0)
    assert m["config"]["conventions"]["variance"]["from"] == "scheduler/scheduler_config.json: variance_type"
    assert m["config"]["conventions"]["spacing"]["from"] == "given"
    # the images are those of the reference sampled under the model's conventions, not under ε
    from fastddpm.io.samples import shard_images
    from fastddpm import to_uint8

    got = torch.from_numpy(shard_images(tmp_path / "out", m["shards"][0], "npz"))
    want = R.sample(net, schedule, torch.arange(2), (1, 8, 8), "ddpm", steps=5, prediction="v", variance="small", clip=True)
    as_eps = R.sample(net, schedule, torch.arange(2), (1, 8, 8), "ddpm", steps=5)
    want_u8 = to_uint8(want).permute(0, 2, 3, 1)
    assert (got.int() - want_u8.int()).abs().max() <= 1  # uint8 rounding of fp32 chains
    assert (got.int() - to_uint8(as_eps).permute(0, 2, 3, 1).int()).abs().max() > 10


def test_every_scheduler_key_is_honoured_or_refused():
    from fastddpm.models.loading import read_scheduler_config

    full = dict(diffusers.DDPMScheduler(prediction_type="v_prediction", variance_type="fixed_large_log", clip_sample=False,
                                        timestep_spacing="leading", steps_offset=1, rescale_betas_zero_snr=True).config)
    schedule, conv = read_scheduler_config(full)
    assert schedule.zero_terminal_snr and (conv.prediction, conv.variance, conv.clip, conv.spacing, conv.offset) == (
        "v", "large", False, "leading", 1)
    for cls in (diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler):  # their defaults are all honoured
        read_scheduler_config(dict(cls().config))
    _, conv = read_scheduler_config(dict(diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True).config))
    assert conv.spacing == "karras" and conv.sources["spacing"].endswith("use_karras_sigmas")
    assert conv.resolve("dpm++2m", 10)[0].spacing == "karras" and conv.resolve("ddim", 10)[0].spacing == "trailing"
    sl, _ = read_scheduler_config(dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    torch.testing.assert_close(sl.betas, Schedule.scaled_linear().betas)


@pytest.mark.parametrize("key, value", [
    ("variance_type", "learned"), ("thresholding", True), ("use_exponential_sigmas", True),
    ("solver_order", 3), ("algorithm_type", "dpmsolver"), ("set_alpha_to_one", False), ("prediction_type", "flow_prediction"),
    ("beta_schedule", "sigmoid"), ("timestep_spacing", "uniform"), ("no_such_key", 1), ("final_sigmas_type", "sigma_min"),
])
def test_scheduler_values_fastddpm_cannot_honour_are_refused_by_name(key, value):
    from fastddpm.models.loading import read_scheduler_config

    with pytest.raises(ValueError, match=f"has {key}="):
        read_scheduler_config({key: value})
    with pytest.raises(ValueError, match="has clip_sample_range=2"):
        read_scheduler_config({"clip_sample": True, "clip_sample_range": 2.0})
    read_scheduler_config({"clip_sample": False, "clip_sample_range": 2.0})  # unused without clipping


def test_a_scheduler_config_that_is_not_json_is_named(tmp_path):
    from fastddpm.pretrained import load_model

    folder = diffusers_folder(tmp_path / "pipe")
    (folder / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="scheduler_config.json is not readable JSON"):
        load_model(str(folder))


def test_an_epsilon_folder_on_a_zero_snr_schedule_is_refused(tmp_path):
    from fastddpm.generate import generate

    folder = diffusers_folder(tmp_path / "pipe", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    with pytest.raises(ValueError, match="prediction: an ε-prediction model is undefined"):
        generate(str(folder), n=2, out=tmp_path / "out", steps=5, device="cpu", progress=False)


def test_a_karras_grid_that_repeats_timesteps():
    # the cosine schedule's σ_max is huge: Karras σ_k are distinct but several round to t = 999,
    # as in diffusers. The deterministic solver samples it (fused = reference); the SDE, whose z
    # is addressed by t, would draw one z twice: refused by name.
    S = Schedule.cosine()
    plan = Plan.build(S, "dpm++2m", steps=10, spacing="karras")
    assert len(set(plan.timesteps)) < plan.K and len(set(plan.alphas.tolist())) == plan.K
    exact = R.sample(toy_model("epsilon", S), S, SEEDS, SHAPE, plan, dtype=torch.float64)
    fast = Sampler(toy_model("epsilon", S), S, method="dpm++2m", steps=10, spacing="karras", shape=SHAPE, progress=False,
                   dtype=torch.float32).run(seeds=SEEDS)
    plain = R.sample(toy_model("epsilon", S), S, SEEDS, SHAPE, plan, dtype=torch.float32)
    assert_fp32_chain(fast, exact, plain, steps=10, scale=4.0)
    with pytest.raises(ValueError, match="spacing: 'karras' with steps=10 .* repeated"):
        Plan.build(S, "sde-dpm++2m", steps=10, spacing="karras")


def test_export_diffusers_is_a_pipeline_that_samples_as_fastddpm_does(tmp_path, monkeypatch):
    from fastddpm import TrainConfig, Trainer, UNet, UNetConfig
    from fastddpm.io.data import digits
    from fastddpm.pretrained import export_diffusers, load_model
    from fastddpm.pretrained import main as pretrained_main

    tiny = UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=16, channel_mult=(1, 2),
                      layers_per_block=1, attn_resolutions=(4,), norm_groups=8)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=3, batch_size=8, warmup=1, checkpoint_every=3, sample_every=0, prediction="v", zero_snr=True)
    Trainer(UNet(tiny), digits(), cfg, out_dir=tmp_path / "run", device="cpu", progress=False).fit()
    out = pretrained_main(["export-diffusers", str(tmp_path / "run"), str(tmp_path / "pipe")])
    with pytest.raises(ValueError, match="out: .* exists; export-diffusers writes a new folder"):
        export_diffusers(str(tmp_path / "run"), out)
    pipe = diffusers.DDPMPipeline.from_pretrained(str(out))
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    images = pipe(batch_size=2, num_inference_steps=3, output_type="np").images  # diffusers samples with it
    assert images.shape == (2, 8, 8, 1) and (images >= 0).all() and (images <= 1).all()
    # diffusers' own loop on the exported folder, fed fastddpm's prior and noise, is fastddpm's chain
    net, schedule, info = load_model(str(tmp_path / "run"))
    steps, seeds = 5, torch.tensor([0, 1])
    sc = pipe.scheduler
    sc.set_timesteps(steps)
    x = K.randn((2, 1, 8, 8), seeds, torch.zeros(2, dtype=torch.int64), K.STREAM_PRIOR)
    ts = [int(t) for t in sc.timesteps]
    for i, t in enumerate(ts):
        tt = torch.full((2,), t)
        z = torch.zeros_like(x) if i == len(ts) - 1 else K.randn(x.shape, seeds, tt, K.STREAM_REVERSE)
        monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *a, _z=z, **kw: _z)
        with torch.no_grad():
            x = sc.step(pipe.unet(x, tt).sample, t, x).prev_sample
    ours = Sampler(net, schedule, method="ddpm", steps=steps, progress=False, dtype=torch.float32).run(seeds=seeds)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)  # fp32 chains: ours from float64 tables, theirs fp32
    # and reading the export back gives the same schedule and conventions
    net2, schedule2, info2 = load_model(str(out))
    torch.testing.assert_close(schedule2.alphas_cumprod, schedule.alphas_cumprod, rtol=0, atol=1e-12)
    assert (info2["conventions"].prediction, info2["conventions"].variance) == ("v", "large")


def test_keys_an_older_config_lacks_take_its_scheduler_classes_defaults():
    # what that class's own pipeline would use: DDPMScheduler clips, takes the posterior variance
    # and the leading grid by default; the source says the value was a default
    from fastddpm.models.loading import read_scheduler_config

    _, conv = read_scheduler_config({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"})
    ref = diffusers.DDPMScheduler().config
    assert (conv.clip, conv.variance, conv.spacing) == (ref.clip_sample, "small", ref.timestep_spacing) == (True, "small", "leading")
    assert conv.sources["clip"] == "scheduler_config.json: clip_sample (absent: DDPMScheduler's default)"
    _, conv = read_scheduler_config({"num_train_timesteps": 1000})  # no class named: fastddpm's defaults, said so
    assert (conv.clip, conv.variance) == (False, "large") and "clip" not in conv.sources
