"""The U-Net: the CIFAR-10 preset's size and cost, and equality with diffusers' UNet2DModel."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastddpm import UNet, UNetConfig
from fastddpm.models.unet import config_from_diffusers

diffusers = pytest.importorskip("diffusers")

CIFAR10_DIFFUSERS = dict(  # google/ddpm-cifar10-32
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    norm_eps=1e-6, norm_num_groups=32, act_fn="silu",
)
SMALL_DIFFUSERS = dict(  # every block type, two heads, odd widths, the other padding
    sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32, 48),
    down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
    attention_head_dim=8, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5, norm_num_groups=8,
)


def test_cifar10_preset_size_and_flops():
    net = UNet(UNetConfig.cifar10())
    assert net.num_parameters() == 35_746_307
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    assert 12.0e9 < fc.get_total_flops() < 12.2e9  # about 12.1 GFLOP per image


def test_cifar10_preset_is_diffusers_ddpm_cifar10():
    theirs = diffusers.UNet2DModel(**CIFAR10_DIFFUSERS)
    assert config_from_diffusers(theirs.config) == UNetConfig.cifar10()
    assert sum(p.numel() for p in theirs.parameters()) == 35_746_307


@pytest.mark.parametrize("config", ["small", "cifar10"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_from_diffusers_gives_the_same_output(config, channels_last):
    torch.manual_seed(0)
    kw = SMALL_DIFFUSERS if config == "small" else CIFAR10_DIFFUSERS
    theirs = diffusers.UNet2DModel(**kw).eval()
    with torch.no_grad():  # random init leaves GroupNorm at identity: perturb it too
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = UNet.from_diffusers(theirs).eval()
    B = 3 if config == "small" else 1
    C, S = kw["in_channels"], kw["sample_size"]
    x = torch.randn(B, C, S, S)
    t = torch.tensor([0, 517, 999][:B])
    if channels_last:
        ours = ours.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = theirs(x, t).sample
        got = ours(x, t)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_scalar_timestep_broadcasts():
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=16, channel_mult=(1, 2), layers_per_block=1, attn_resolutions=(4,), norm_groups=8)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.tensor(5)), net(x, torch.tensor([5, 5])))


def test_unsupported_diffusers_configs_are_refused():
    bad = dict(SMALL_DIFFUSERS, resnet_time_scale_shift="scale_shift")
    with pytest.raises(ValueError, match="resnet_time_scale_shift='scale_shift' is not supported"):
        UNet.from_diffusers(diffusers.UNet2DModel(**bad))
    mismatched = dict(SMALL_DIFFUSERS, up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D"))
    with pytest.raises(ValueError, match="attention must sit at the same levels"):
        UNet.from_diffusers(diffusers.UNet2DModel(**mismatched))
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(UNetConfig(base_channels=20))


def test_a_class_conditional_diffusers_model_gives_the_same_prediction_for_every_label():
    # diffusers' UNet2DModel(num_class_embeds=N+1): N classes and fastddpm's null label, the last
    from fastddpm.models.unet import config_to_diffusers

    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**SMALL_DIFFUSERS, num_class_embeds=11).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = UNet.from_diffusers(theirs).eval()
    assert ours.config.num_classes == 10
    x, t = torch.randn(11, 1, 16, 16), torch.tensor([0, 517, 999] * 3 + [5, 6])
    labels = torch.arange(11)  # every class and the null label
    with torch.no_grad():
        want = theirs(x, t, class_labels=labels).sample
        torch.testing.assert_close(ours(x, t, labels), want, rtol=1.3e-6, atol=1e-5)
        assert not torch.allclose(ours(x, t, labels), ours(x, t, labels.roll(1)))  # the label matters
        back = diffusers.UNet2DModel(**config_to_diffusers(ours.config))  # and diffusers reads ours
        back.load_state_dict(ours.state_dict(), strict=True)
        torch.testing.assert_close(back.eval()(x, t, class_labels=labels).sample, want, rtol=1.3e-6, atol=1e-5)


def test_labels_are_checked():
    from fastddpm import Sampler, TrainConfig, Trainer

    cond = UNet(UNetConfig(**{**{k: v for k, v in config_from_diffusers(SMALL_DIFFUSERS).__dict__.items()}, "num_classes": 3}))
    plain = UNet(config_from_diffusers(SMALL_DIFFUSERS))
    x, t = torch.zeros(2, 1, 16, 16), torch.tensor([1, 2])
    for fn, match in ((lambda: plain(x, t, torch.tensor([0, 1])), "labels: this model is unconditional"),
                      (lambda: cond(x, t), "labels: this model is class-conditional .num_classes=3"),
                      (lambda: cond(x, t, torch.tensor([0, 4])), r"labels: expected classes in \[0, 3\]"),
                      (lambda: cond(x, t, torch.tensor([0])), "labels: expected shape"),
                      (lambda: cond(x, t, torch.tensor([0.0, 1.0])), "labels: expected an int32/int64"),
                      (lambda: UNetConfig(num_classes=0), "num_classes: expected None"),
                      (lambda: Sampler(cond, progress=False).run(batch=2), "labels: this model is class-conditional"),
                      (lambda: Trainer(cond, torch.zeros(4, 1, 16, 16), TrainConfig(steps=1)),
                       "data: a class-conditional model .* trains on \\(images, labels\\)")):
        with pytest.raises((ValueError, TypeError), match=match):
            fn()
    assert cond(x, t, torch.tensor([0, 3])).shape == x.shape  # 3: the null label
