"""Every public entry point, fed the bad inputs a new user tries: each is a ValueError or a
TypeError whose message starts with the argument's name, raised before any work."""

import math

import pytest
import torch

from fastddpm import Plan, Sampler, Schedule, TrainConfig, Trainer, UNet, UNetConfig
from fastddpm.generate import generate
from fastddpm import kernels as K
from fastddpm.io.data import digits

X = torch.zeros(2, 3, 8, 8)
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
    # generate
    ("generate n", lambda: generate("fashion-mnist-small", n=0, out="/tmp/x"), "n"),
    ("generate format", lambda: generate("fashion-mnist-small", n=3, out="/tmp/x", format="jpg"), "format"),
    ("generate out", lambda: generate("fashion-mnist-small", n=3), "out"),
]


@pytest.mark.parametrize("label,fn,name", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(label, fn, name):
    with pytest.raises((ValueError, TypeError)) as e:
        fn()
    assert str(e.value).startswith(f"{name}:"), f"{label}: {e.value}"


def test_cli_bad_values_are_argparse_errors_or_named(capsys):
    from fastddpm.train import main as train_main

    for argv, needle in ((["--schedule", "quad"], "--schedule: invalid choice"), (["--fused", "maybe"], "unrecognized arguments"),
                         (["--steps", "x"], "--steps: invalid int value")):
        with pytest.raises(SystemExit):
            train_main(argv)
        assert needle in capsys.readouterr().err
    with pytest.raises(ValueError, match="^steps: expected a positive int"):
        train_main(["--steps", "-5", "--out", "/tmp/fastddpm-never"])
