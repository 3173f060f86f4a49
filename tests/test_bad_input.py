"""Every public entry point, fed the bad inputs a new user tries: each is a ValueError or a
TypeError whose message starts with the argument's name, raised before any work."""

import math

import pytest
import torch

from fastddpm import Plan, Sampler, Schedule, TrainConfig, Trainer, UNet, UNetConfig, fused, metrics, save_grid
from fastddpm import kernels as K
from fastddpm import reference as R
from fastddpm.core.plan import Method
from fastddpm.generate import generate
from fastddpm.io.data import digits
from fastddpm.models.loading import load_model

X = torch.zeros(2, 3, 8, 8)
NO_GPU = "cuda:7"  # no GPU here; on a machine with one, no eighth
T2 = torch.tensor([0, 5])
TABLE = Schedule.linear().table()
SMALL = dict(in_channels=1, out_channels=1, sample_size=8, base_channels=16, channel_mult=(1, 2), layers_per_block=1,
             attn_resolutions=(4,), norm_groups=8)


def _model(x, t):
    return x


CASES = [
    # kernels
    ("q_sample zero batch", lambda: K.q_sample(X[:0], T2[:0], TABLE, seeds=0), "x0"),
    ("q_sample zero pixels", lambda: K.q_sample(torch.zeros(2, 3, 0, 8), T2, TABLE, seeds=0), "x0"),
    ("q_sample seed overflow", lambda: K.q_sample(X, T2, TABLE, seeds=2**63 - 1), "seeds"),
    ("q_sample stream", lambda: K.q_sample(X, T2, TABLE, seeds=0, stream=2**32), "stream"),
    ("reverse_step clip='no'", lambda: K.reverse_step(X, X, T2, TABLE, seeds=0, clip="no"), "clip"),
    ("loss reduction", lambda: K.eps_mse_loss(X, T2, seeds=0, reduction="avg"), "reduction"),
    ("randn zero batch", lambda: K.randn((0, 3, 8, 8), 0), "shape"),
    ("randn bad shape", lambda: K.randn((2, 3, 8), 0), "shape"),
    ("coef_table complex", lambda: K.coef_table(torch.tensor([0.9 + 0j, 0.5])), "alphas_cumprod"),
    ("coef_table variance", lambda: K.coef_table(torch.tensor([0.9, 0.5]), "fixed_large"), "variance"),
    ("philox_words C", lambda: K.philox_words(torch.tensor([1]), torch.tensor([0]), 0, 0, 4), "C"),
    # Schedule
    ("Schedule T=0", lambda: Schedule.linear(T=0), "T"),
    ("Schedule complex betas", lambda: Schedule.from_betas(torch.tensor([0.1 + 1j, 0.2])), "betas"),
    ("Schedule beta 1", lambda: Schedule.from_betas([0.1, 1.0, 0.2]), "betas"),  # (last only: zero terminal SNR)
    ("Schedule beta 1 alone", lambda: Schedule.from_betas([1.0]), "betas"),
    ("Schedule non-finite table", lambda: Schedule.from_betas(torch.full((200,), 0.999)), "betas"),
    ("Schedule strings", lambda: Schedule.from_betas(["a", "b"]), "betas"),
    # UNetConfig
    *[(f"UNetConfig {k}={v}", (lambda k=k, v=v: UNetConfig(**{**SMALL, k: v})), k) for k, v in (
        ("in_channels", 0), ("out_channels", -1), ("sample_size", 0), ("base_channels", 0), ("layers_per_block", -1),
        ("norm_groups", 0), ("channel_mult", ()), ("channel_mult", (1, 0)), ("attn_resolutions", (0,)), ("norm_eps", 0),
        ("dropout", 1.0), ("attention_head_dim", 0), ("downsample_padding", 2), ("flip_sin_to_cos", "yes"), ("freq_shift", 100),
    )],
    ("UNetConfig norm_groups divides", lambda: UNetConfig(**{**SMALL, "base_channels": 20}), "channel_mult"),
    # Plan / Sampler
    ("Plan method", lambda: Plan.build(method="euler"), "method"),
    ("Sampler model", lambda: Sampler(42), "model"),
    ("Sampler steps", lambda: Sampler(_model, shape=(3, 8, 8), method="ddim", steps=0), "steps"),
    ("Sampler eta", lambda: Sampler(_model, shape=(3, 8, 8), method="ddim", eta=-1), "eta"),
    ("Sampler clip", lambda: Sampler(_model, shape=(3, 8, 8), clip="no"), "clip"),
    ("Sampler shape", lambda: Sampler(_model, shape=(3, 0, 8)), "shape"),
    ("Sampler dtype", lambda: Sampler(_model, shape=(3, 8, 8), dtype=torch.int32), "dtype"),
    ("Sampler max_batch", lambda: Sampler(_model, shape=(3, 8, 8), max_batch=0), "max_batch"),
    ("Sampler compile", lambda: Sampler(_model, shape=(3, 8, 8), compile="yes"), "compile"),
    ("run batch 0", lambda: Sampler(_model, shape=(3, 8, 8), progress=False).run(batch=0), "batch"),
    ("run seeds list", lambda: Sampler(_model, shape=(3, 8, 8), progress=False).run(seeds=[1, "x"]), "seeds"),
    ("run seed overflow", lambda: Sampler(_model, shape=(3, 8, 8), progress=False).run(batch=3, seed=2**63 - 1), "seed"),
    ("run stop_after", lambda: Sampler(_model, shape=(3, 8, 8), progress=False).run(batch=1, stop_after=0), "stop_after"),
    # TrainConfig / Trainer
    *[(f"TrainConfig {k}={v}", (lambda k=k, v=v: TrainConfig(**{k: v})), k) for k, v in (
        ("steps", -5), ("batch_size", 0), ("batch_size", -1), ("lr", -1.0), ("lr", math.inf), ("warmup", -1), ("grad_clip", -1.0),
        ("ema_decay", 2), ("ema_decay", 1.0), ("seed", 2**23), ("seed", -1), ("seed", 2**40), ("T", 0), ("schedule", "quad"),
        ("fused", "yes"), ("compile", 1), ("log_every", 0), ("checkpoint_every", -1), ("sample_every", -1), ("sample_batch", 0),
        ("keep", 0), ("keep", -1),
    )],
    ("Trainer config", lambda: Trainer(UNet(UNetConfig(**SMALL)), digits(), {"steps": 3}), "config"),
    ("Trainer empty data", lambda: Trainer(UNet(UNetConfig(**SMALL)), digits()[:0], TrainConfig(steps=1)), "data"),
    ("Trainer image size", lambda: Trainer(UNet(UNetConfig(**SMALL)), torch.zeros(4, 1, 9, 9), TrainConfig(steps=1)), "data"),
    ("Trainer resume without folder", lambda: Trainer(UNet(UNetConfig(**SMALL)), digits(), TrainConfig(steps=1), resume=True), "resume"),
    # errors from deep inside, now named (issue 23, category 1)
    ("Sampler device cuda", lambda: Sampler(_model, shape=(3, 8, 8), device="cuda"), "device"),
    ("Sampler device tpu", lambda: Sampler(_model, shape=(3, 8, 8), device="tpu"), "device"),
    ("Trainer device cuda", lambda: Trainer(UNet(UNetConfig(**SMALL)), digits(), TrainConfig(steps=1), device="cuda:3"), "device"),
    ("generate device", lambda: generate("digits", n=2, out="/tmp/fastddpm-never", device="cuda"), "device"),
    ("UNet x channels", lambda: UNet(UNetConfig(**SMALL))(torch.zeros(2, 3, 8, 8), T2), "x"),
    ("UNet x odd size", lambda: UNet(UNetConfig(**SMALL))(torch.zeros(2, 1, 7, 7), T2), "x"),
    ("UNet x 3-D", lambda: UNet(UNetConfig(**SMALL))(torch.zeros(1, 8, 8), T2[:1]), "x"),
    ("UNet x float64", lambda: UNet(UNetConfig(**SMALL))(torch.zeros(2, 1, 8, 8, dtype=torch.float64), T2), "x"),
    ("UNet t length", lambda: UNet(UNetConfig(**SMALL))(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1, 2])), "t"),
    ("UNet config dict", lambda: UNet(config=dict(SMALL)), "config"),
    ("from_diffusers object", lambda: UNet.from_diffusers(object()), "model"),
    ("Schedule.linear start str", lambda: Schedule.linear(beta_start="0.1"), "beta_start"),
    ("Schedule.linear end nan", lambda: Schedule.linear(beta_end=math.nan), "beta_end"),
    ("Schedule.cosine s str", lambda: Schedule.cosine(s="a"), "s"),
    ("Schedule.cosine s negative", lambda: Schedule.cosine(s=-1.0), "s"),
    ("Schedule.cosine max_beta", lambda: Schedule.cosine(max_beta=1.5), "max_beta"),
    ("Schedule.scaled_linear start", lambda: Schedule.scaled_linear(beta_start=[0.1]), "beta_start"),
    ("fused q_sample table", lambda: fused.q_sample(X, T2, TABLE, seeds=0), "schedule"),
    ("fused loss schedule", lambda: fused.diffusion_loss(X, T2, TABLE, x0=X, seeds=0, prediction="v"), "schedule"),
    ("fused sampler_step plan", lambda: fused.sampler_step(X, X, T2, Schedule.linear()), "plan"),
    ("reference q_sample t=T", lambda: R.q_sample(X, torch.tensor([0, 1000]), Schedule.linear(), seeds=torch.tensor([0, 1])), "t"),
    ("reference q_sample t float", lambda: R.q_sample(X, torch.tensor([0.0, 1.0]), Schedule.linear(), seeds=torch.tensor([0, 1])), "t"),
    ("reference reverse_step t=-1", lambda: R.reverse_step(X, X, torch.tensor([-1, 0]), Schedule.linear(), seeds=torch.tensor([0, 1])), "t"),
    ("reference sample seeds str", lambda: R.sample(_model, Schedule.linear(), "01", (3, 8, 8)), "seeds"),
    ("reference sample seeds floats", lambda: R.sample(_model, Schedule.linear(), [0.5, 1.5], (3, 8, 8)), "seeds"),
    ("generate seeds str items", lambda: generate("digits", out="/tmp/fastddpm-never", seeds=["a"]), "seeds"),
    ("generate seeds 2**64", lambda: generate("digits", out="/tmp/fastddpm-never", seeds=[2**64]), "seeds"),
    ("generate world 0", lambda: generate("digits", n=2, out="/tmp/fastddpm-never", world=0), "world"),
    ("evaluate k -1", lambda: metrics.evaluate(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "digits", k=-1), "k"),
    ("evaluate kid_size 0", lambda: metrics.evaluate(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "digits", kid_size=0), "kid_size"),
    ("evaluate what", lambda: metrics.evaluate(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "digits", what="fd"), "what"),
    # accepted and silently wrong before, now refused (category 2)
    ("sampler_step eps_term", lambda: K.sampler_step(X, X, T2 * 0, Plan.build(method="ddim", steps=5).table("cpu"),
                                                     Plan.build(method="ddim", steps=5).timesteps_on("cpu"), eps_term=False), "eps_term"),
    ("sampler_step negative timesteps", lambda: K.sampler_step(X, X, T2 * 0, TABLE[:2], torch.tensor([-3, 0])), "timesteps"),
    ("sampler_step timesteps 2**32", lambda: K.sampler_step(X, X, T2 * 0, TABLE[:2], torch.tensor([2**32, 0]), seeds=0), "timesteps"),
    ("loss t 2**32", lambda: K.eps_mse_loss(X, torch.tensor([2**32, 0]), seeds=0), "t"),
    ("ddim eta beyond the step", lambda: Plan.build(method="ddim", steps=10, eta=5.0), "eta"),
    ("Plan options beside a Method", lambda: Plan.build(Schedule.linear(), Method("ddim", 10), steps=5), "options"),
    ("UNetConfig attn no level", lambda: UNetConfig(**{**SMALL, "attn_resolutions": (3,)}), "attn_resolutions"),
    ("run seeds string", lambda: Sampler(_model, shape=(3, 8, 8), progress=False).run(seeds="12"), "seeds"),
    ("run seeds floats", lambda: Sampler(_model, shape=(3, 8, 8), progress=False).run(seeds=[1.5, 2]), "seeds"),
    ("generate seeds floats", lambda: generate("digits", out="/tmp/fastddpm-never", seeds=[1.5, 2]), "seeds"),
    ("generate rank = world", lambda: generate("digits", n=2, out="/tmp/fastddpm-never", rank=2, world=2), "rank"),
    ("generate rank -1", lambda: generate("digits", n=2, out="/tmp/fastddpm-never", rank=-1, world=2), "rank"),
    ("generate progress str", lambda: generate("digits", n=2, out="/tmp/fastddpm-never", progress="no"), "progress"),
    ("coef_table int tensor", lambda: K.coef_table(torch.tensor([1, 0])), "alphas_cumprod"),
    ("coef_table float t", lambda: K.coef_table(Schedule.linear().alphas_cumprod, t=[0.5, 1.5], prev=[-1, 0]), "t"),
    ("coef_table float prev", lambda: K.coef_table(Schedule.linear().alphas_cumprod, t=[1, 2], prev=[0.0, 1.0]), "prev"),
    ("evaluate kid_subsets 0", lambda: metrics.evaluate(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "digits", kid_subsets=0), "kid_subsets"),
    ("evaluate k 0", lambda: metrics.evaluate(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "digits", k=0), "k"),
    ("save_grid NaN", lambda: save_grid(torch.full((2, 1, 8, 8), math.nan), "/tmp/fastddpm-never.png"), "x"),
    ("save_grid nrow 0", lambda: save_grid(torch.zeros(2, 1, 8, 8), "/tmp/fastddpm-never.png", nrow=0), "nrow"),
    ("save_grid int32", lambda: save_grid(torch.zeros(2, 1, 8, 8, dtype=torch.int32), "/tmp/fastddpm-never.png"), "x"),
    ("save_grid ambiguous uint8", lambda: save_grid(torch.zeros(2, 3, 8, 3, dtype=torch.uint8), "/tmp/fastddpm-never.png"), "x"),
    ("Sampler channels_last 'yes'", lambda: Sampler(_model, shape=(3, 8, 8), channels_last="yes"), "channels_last"),
    ("Trainer resume 'no'", lambda: Trainer(UNet(UNetConfig(**SMALL)), digits(), TrainConfig(steps=1), out_dir="/tmp/fastddpm-never",
                                            resume="no"), "resume"),
    ("Trainer progress 'no'", lambda: Trainer(UNet(UNetConfig(**SMALL)), digits(), TrainConfig(steps=1), progress="no"), "progress"),
    # generate
    ("generate n", lambda: generate("fashion-mnist-small", n=0, out="/tmp/x"), "n"),
    ("generate format", lambda: generate("fashion-mnist-small", n=3, out="/tmp/x", format="jpg"), "format"),
    ("generate out", lambda: generate("fashion-mnist-small", n=3), "out"),
    # issue 31: the last deep errors, each named
    ("model None", lambda: generate(None, 4, "/tmp/fastddpm-never"), "model"),
    ("model a number", lambda: load_model(3), "model"),
    ("model an object", lambda: load_model(object()), "model"),
    ("a coefficient table on a missing GPU", lambda: K.coef_table(Schedule.linear().alphas_cumprod, device=NO_GPU), "device"),
    ("a Schedule table on a missing GPU", lambda: Schedule.linear().table(device=NO_GPU), "device"),
    ("a Schedule tensor on a missing GPU", lambda: Schedule.linear().on("alpha_bar", NO_GPU), "device"),
    ("min-SNR weights on a missing GPU", lambda: K.min_snr_weights(Schedule.linear().alphas_cumprod, 5.0, device=NO_GPU), "device"),
    ("an unknown table name", lambda: Schedule.linear().on("alpha_hat", "cpu"), "name"),
    ("stop_after past the last step", lambda: R.sample(_model, Schedule.linear(), [1], (3, 8, 8), "ddim", steps=3, stop_after=4), "stop_after"),
    ("stop_after negative", lambda: R.sample(_model, Schedule.linear(), [1], (3, 8, 8), "ddim", steps=3, stop_after=-1), "stop_after"),
    ("n of 10**12 images", lambda: generate("digits", 10**12, "/tmp/fastddpm-never"), "n"),
    ("seeds 0-10**12", lambda: generate("digits", out="/tmp/fastddpm-never", seeds=f"0-{10**12}"), "seeds"),
    ("seeds range(10**12)", lambda: generate("digits", out="/tmp/fastddpm-never", seeds=range(10**12)), "seeds"),
    ("KID of NHWC images", lambda: metrics.kid(torch.rand(64, 8, 8, 1), torch.rand(64, 8, 8, 1)), "x"),
    ("precision/recall of NHWC images", lambda: metrics.prdc(torch.rand(64, 8, 8, 1), torch.rand(64, 8, 8, 1)), "real"),
    ("KID of sets of two widths", lambda: metrics.kid(torch.rand(64, 5), torch.rand(64, 6)), "y"),
    ("labelled data for an unconditional model",
     lambda: Trainer(UNet(UNetConfig(**SMALL)), (digits(), torch.zeros(1797, dtype=torch.int64)), TrainConfig(steps=1), device="cpu"),
     "data"),
    ("randn channels_last a string", lambda: K.randn((2, 3, 8, 8), 1, T2, channels_last="yes"), "channels_last"),
    ("value_checks a string", lambda: K.value_checks("no").__enter__(), "enabled"),
    ("an integer coefficient table", lambda: K.coef_table(Schedule.linear().alphas_cumprod, dtype=torch.int32), "dtype"),
    ("integer rows for another prediction", lambda: K.for_prediction(torch.ones(3, 10, dtype=torch.int64), "v"), "rows"),
    ("philox float counters", lambda: K.philox(torch.tensor(1), torch.tensor([1.5]), T2, T2, T2), "c0"),
    ("philox rounds a string", lambda: K.philox(torch.tensor(1), T2, T2, T2, T2, rounds="10"), "rounds"),
]


@pytest.mark.parametrize("label,fn,name", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(label, fn, name):
    import pathlib

    with pytest.raises((ValueError, TypeError)) as e:
        fn()
    assert str(e.value).startswith(f"{name}:"), f"{label}: {e.value}"
    assert not pathlib.Path("/tmp/fastddpm-never").exists(), f"{label}: a refused call created its output folder"


def test_documented_meanings_instead_of_errors():
    # a shipped model's weights file (its card beside it) is that shipped model
    from fastddpm import pretrained

    by_path, _, info = load_model(pretrained.SHIPPED / "digits.safetensors")
    by_name, _, named = load_model("digits")
    assert info["hash"] == named["hash"] and info["kind"] == "shipped"
    # a NumPy array of images given to evaluate is one batch, NHWC as generate writes it
    import numpy as np

    u = np.random.default_rng(0).integers(0, 256, (200, 8, 8, 1), dtype=np.uint8)
    assert metrics.evaluate(u, "digits")["fd"] == metrics.evaluate(torch.from_numpy(u).permute(0, 3, 1, 2), "digits")["fd"]
    # float timesteps into the U-Net: the embedding takes them, as diffusers' does
    net = UNet(UNetConfig(**SMALL))
    torch.testing.assert_close(net(torch.zeros(2, 1, 8, 8), torch.tensor([3.0, 5.0])), net(torch.zeros(2, 1, 8, 8), torch.tensor([3, 5])))
    # a list of ints as the reference's seeds is the tensor of them
    a = R.sample(_model, Schedule.linear(), [3, 4], (3, 8, 8), "ddim", steps=2)
    torch.testing.assert_close(a, R.sample(_model, Schedule.linear(), torch.tensor([3, 4]), (3, 8, 8), "ddim", steps=2))
    # a last variance of exactly 1 is zero terminal SNR (diffusers' rescaled betas end so)
    assert Schedule.from_betas([0.1, 0.2, 1.0]).zero_terminal_snr


def test_cli_bad_values_are_argparse_errors_or_named(capsys):
    from fastddpm.train import main as train_main

    for argv, needle in ((["--schedule", "quad"], "--schedule: invalid choice"), (["--fused", "maybe"], "unrecognized arguments"),
                         (["--steps", "x"], "--steps: invalid int value")):
        with pytest.raises(SystemExit):
            train_main(argv)
        assert needle in capsys.readouterr().err
    with pytest.raises(ValueError, match="^steps: expected a positive int"):
        train_main(["--steps", "-5", "--out", "/tmp/fastddpm-never"])
