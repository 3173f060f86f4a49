"""OpenAI's ADM U-Net (guided-diffusion, Dhariwal & Nichol 2021; improved-diffusion, Nichol &
Dhariwal 2021), written here with OpenAI's module names, so their checkpoints load as they are.

    net = ADM(ADMConfig.from_flags("--image_size 64 --num_channels 192 ... --learn_sigma True"))
    net.load_state_dict(torch.load("64x64_diffusion.pt", weights_only=True))

Why a network of its own rather than a key map onto fastddpm's U-Net (which mirrors diffusers'
UNet2DModel): ADM differs in structure, not only in names: scale-shift norm (AdaGN), residual
blocks that resample, a head count or a head width per level, two q/k/v orders, the
embedding's cos-then-sin order, channel multipliers below 1 (512×512). Folding all of that into
the other U-Net would make every fastddpm model pay for options only OpenAI checkpoints use,
and a key map would have to be proven for every combination; with OpenAI's own names a
checkpoint loads with `strict=True` and any mismatch is named by torch. The arithmetic is
OpenAI's `unet.py` (checked against `guided-diffusion-sdk` in tests/test_adm.py); attention runs
through `F.scaled_dot_product_attention` (the same function as their einsum softmax, fused), and
GroupNorm in float32 as their GroupNorm32, so bf16 and channels-last work as for any model.
"""

import math
import shlex
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 1000  # OpenAI's class_cond models: ImageNet


@dataclass(frozen=True)
class ADMConfig:
    """OpenAI's UNetModel arguments (unet.py), and the two things the sampler needs beside them."""

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 3  # 2 × in_channels with learn_sigma
    num_res_blocks: int = 2
    attention_resolutions: tuple = (4, 8)  # downsampling rates (image_size // resolution), as OpenAI's create_model makes them
    dropout: float = 0.0
    channel_mult: tuple = (1, 2, 3, 4)
    conv_resample: bool = True
    num_classes: int = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    timestep_scale: float = 1.0  # improved-diffusion's rescale_timesteps: the network sees t · 1000 / T
    null_label: bool = False  # no unconditional label: ADM's class-conditional models are not classifier-free

    @property
    def sample_size(self) -> int:  # what the Sampler reads (diffusers' name)
        return self.image_size

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the input's dtype (OpenAI's GroupNorm32)."""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _norm(ch: int) -> nn.Module:
    return GroupNorm32(32, ch)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """OpenAI's sinusoidal embedding, float32: cos then sin (diffusers' flip_sin_to_cos order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedSequential(nn.Sequential):
    """Children that take the embedding get it (ResBlock); the others get x alone."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=False, up=False, down=False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:  # AdaGN: norm(h) (1 + scale) + shift
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the pixels. legacy (use_new_attention_order=False): the 3C q/k/v
    channels are split into heads first, then each head's into q, k, v; new: q, k, v first."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"num_head_channels: {num_head_channels} does not divide a level's {channels} channels")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} heads do not divide a level's {channels} channels")
        self.new_order = new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # (b, 3c, L)
        n, L = self.num_heads, x.shape[-1]
        ch = c // n
        if self.new_order:
            q, k, v = (u.reshape(b, n, ch, L) for u in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b, n, 3 * ch, L).split(ch, dim=2)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))  # (b, n, L, ch)
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, L))
        return (x + h).reshape(b, c, hh, ww)


class ADM(nn.Module):
    """OpenAI's UNetModel: forward(x, t, y=None) -> (B, out_channels, H, W). t is the model's
    timestep (0 .. T−1), multiplied by config.timestep_scale first (improved-diffusion's
    rescale_timesteps); y the class of a class_cond model."""

    def __init__(self, config: ADMConfig):
        super().__init__()
        if not isinstance(config, ADMConfig):
            raise TypeError(f"config: expected an ADMConfig, got {type(config).__name__}")
        self.config = c = config
        heads_up = c.num_heads if c.num_heads_upsample == -1 else c.num_heads_upsample
        mc, temb = c.model_channels, c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, temb)
        ch = input_ch = int(c.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        res = dict(dropout=c.dropout, use_scale_shift_norm=c.use_scale_shift_norm)
        attn = dict(num_head_channels=c.num_head_channels, new_order=c.use_new_attention_order)
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [ResBlock(ch, temb, out_channels=int(mult * mc), **res)]
                ch = int(mult * mc)
                if ds in c.attention_resolutions:
                    layers.append(AttentionBlock(ch, c.num_heads, **attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = ResBlock(ch, temb, out_channels=ch, down=True, **res) if c.resblock_updown else \
                    Downsample(ch, c.conv_resample, out_channels=ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, temb, **res), AttentionBlock(ch, c.num_heads, **attn),
                                                    ResBlock(ch, temb, **res))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), temb, out_channels=int(mc * mult), **res)]
                ch = int(mc * mult)
                if ds in c.attention_resolutions:
                    layers.append(AttentionBlock(ch, heads_up, **attn))
                if level and i == c.num_res_blocks:
                    layers.append(ResBlock(ch, temb, out_channels=ch, up=True, **res) if c.resblock_updown else
                                  Upsample(ch, c.conv_resample, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(input_ch, c.out_channels, 3, padding=1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, t, y=None):
        c = self.config
        if (y is None) != (c.num_classes is None):
            raise ValueError(f"y: {'a class-conditional' if c.num_classes is not None else 'an unconditional'} ADM "
                             f"{'needs' if c.num_classes is not None else 'takes no'} class labels")
        t = t.float() * c.timestep_scale if c.timestep_scale != 1.0 else t
        emb = self.time_embed(timestep_embedding(t, c.model_channels).to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, hs = x.to(self.time_embed[0].weight.dtype), []
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


# ------------------------------------------------------------------ OpenAI's flags

# script_util.model_and_diffusion_defaults() of each codebase: the flags a checkpoint was trained
# with, where its README's MODEL_FLAGS / DIFFUSION_FLAGS leave them out
DEFAULTS = {
    "guided-diffusion": dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                             num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
                             class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
                             use_fp16=False, use_new_attention_order=False, learn_sigma=False, sigma_small=False,
                             diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
                             predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False),
    "improved-diffusion": dict(image_size=64, num_channels=128, num_res_blocks=3, num_heads=4, num_heads_upsample=-1,
                               attention_resolutions="16,8", dropout=0.0, learn_sigma=False, sigma_small=False,
                               class_cond=False, diffusion_steps=4000, noise_schedule="linear", timestep_respacing="",
                               use_kl=False, predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=True,
                               use_checkpoint=False, use_scale_shift_norm=True),
}
CODEBASES = tuple(DEFAULTS)
TRAINING_ONLY = ("use_checkpoint", "use_kl", "rescale_learned_sigmas", "use_fp16")  # change nothing at sampling
CHANNEL_MULT = {"guided-diffusion": {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                                     64: (1, 2, 3, 4)},
                "improved-diffusion": {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}}

# The published checkpoints, by file name, with the flags of their READMEs
_ADM_256 = ("--attention_resolutions 32,16,8 --diffusion_steps 1000 --image_size 256 --learn_sigma True "
            "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
            "--use_fp16 True --use_scale_shift_norm True")
PRESETS = {
    "64x64_diffusion": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
                       "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
                       "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
    "128x128_diffusion": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
                         "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
                         "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "256x256_diffusion": _ADM_256 + " --class_cond True",
    "256x256_diffusion_uncond": _ADM_256 + " --class_cond False",
    "512x512_diffusion": _ADM_256.replace("--image_size 256", "--image_size 512").replace("--use_fp16 True", "--use_fp16 False")
                         + " --class_cond True",
    **{name: _ADM_256 + " --class_cond False --dropout 0.1" for name in ("lsun_bedroom", "lsun_cat", "lsun_horse")},
    "lsun_horse_nodropout": _ADM_256 + " --class_cond False",
    "cifar10_uncond_50M_500K": "--codebase improved-diffusion --image_size 32 --num_channels 128 --num_res_blocks 3 "
                               "--learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine",
    "cifar10_uncond_vlb_50M_500K": "--codebase improved-diffusion --image_size 32 --num_channels 128 --num_res_blocks 3 "
                                   "--learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine --use_kl True",
    "imagenet64_uncond_100M_1500K": "--codebase improved-diffusion --image_size 64 --num_channels 128 --num_res_blocks 3 "
                                    "--num_heads 4 --learn_sigma True --dropout 0.0 --diffusion_steps 4000 --noise_schedule cosine",
    "imagenet64_uncond_vlb_100M_1500K": "--codebase improved-diffusion --image_size 64 --num_channels 128 --num_res_blocks 3 "
                                        "--num_heads 4 --learn_sigma True --dropout 0.0 --diffusion_steps 4000 "
                                        "--noise_schedule cosine --use_kl True",
}


def _bool(name, v):
    low = v.lower()
    if low in ("yes", "true", "t", "y", "1"):
        return True
    if low in ("no", "false", "f", "n", "0"):
        return False
    raise ValueError(f"flags: --{name} expects a boolean (True/False), got {v!r}")


def flag_pairs(flags: str) -> dict:
    """'--name value --other=value' -> {name: value, other: value} (strings), as a shell splits them."""
    words = shlex.split(flags)
    given, i = {}, 0
    while i < len(words):
        w = words[i]
        if not w.startswith("--"):
            raise ValueError(f"flags: expected '--name value' pairs (OpenAI's MODEL_FLAGS), got {w!r}")
        name, eq, value = w[2:].partition("=")
        if not eq:
            if i + 1 >= len(words):
                raise ValueError(f"flags: --{name} has no value")
            value = words[i + 1]
            i += 1
        given[name] = value
        i += 1
    return given


def parse_flags(flags) -> dict:
    """OpenAI's script flags ('--image_size 64 --learn_sigma True ...', as their README's
    MODEL_FLAGS and DIFFUSION_FLAGS; or a dict of them; or a preset's name) -> every flag's
    value, the codebase's defaults filled in. `--codebase improved-diffusion` picks that
    codebase's defaults (default guided-diffusion). An unknown flag is refused by name."""
    if isinstance(flags, str) and flags in PRESETS:
        flags = PRESETS[flags]
    if isinstance(flags, str):
        given = flag_pairs(flags)
    elif isinstance(flags, dict):
        given = dict(flags)
    else:
        raise TypeError(f"flags: expected OpenAI's flags as a string or a dict, or a preset's name ({', '.join(PRESETS)}), "
                        f"got {type(flags).__name__}")
    codebase = given.pop("codebase", "guided-diffusion")
    if codebase not in DEFAULTS:
        raise ValueError(f"flags: --codebase expects one of {CODEBASES}, got {codebase!r}")
    out = dict(DEFAULTS[codebase])
    for name, value in given.items():
        if name not in out:
            raise ValueError(f"flags: --{name} is not a flag of {codebase}'s script_util (known: {', '.join(sorted(out))})")
        default = out[name]
        if isinstance(value, str) and not isinstance(default, str):
            try:
                value = _bool(name, value) if isinstance(default, bool) else type(default)(value)
            except ValueError as e:
                if "boolean" in str(e):
                    raise
                raise ValueError(f"flags: --{name} expects a {type(default).__name__}, got {value!r}") from None
        out[name] = value
    out["codebase"] = codebase
    return out


def config_from_flags(f: dict) -> ADMConfig:
    """The network of parsed flags (OpenAI's create_model)."""
    size = f["image_size"]
    mult = f.get("channel_mult", "")
    if mult:
        channel_mult = tuple(float(m) if "." in m else int(m) for m in str(mult).split(","))
    elif size in CHANNEL_MULT[f["codebase"]]:
        channel_mult = CHANNEL_MULT[f["codebase"]][size]
    else:
        raise ValueError(f"flags: --image_size {size} has no default channel_mult in {f['codebase']} "
                         f"({sorted(CHANNEL_MULT[f['codebase']])}): pass --channel_mult")
    attention = tuple(size // int(r) for r in str(f["attention_resolutions"]).split(",") if r.strip())
    return ADMConfig(image_size=size, in_channels=3, model_channels=f["num_channels"],
                     out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=f["num_res_blocks"],
                     attention_resolutions=attention, dropout=f["dropout"], channel_mult=channel_mult,
                     num_classes=NUM_CLASSES if f["class_cond"] else None, num_heads=f["num_heads"],
                     num_head_channels=f.get("num_head_channels", -1), num_heads_upsample=f["num_heads_upsample"],
                     use_scale_shift_norm=f["use_scale_shift_norm"], resblock_updown=f.get("resblock_updown", False),
                     use_new_attention_order=f.get("use_new_attention_order", False),
                     timestep_scale=1000.0 / f["diffusion_steps"] if f["rescale_timesteps"] else 1.0)


def betas(noise_schedule: str, steps: int):
    """OpenAI's get_named_beta_schedule, float64: 'linear' (Ho et al.'s, scaled to `steps`) or
    'cosine' (Nichol & Dhariwal's, β capped at 0.999)."""
    import numpy as np

    if noise_schedule == "linear":
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if noise_schedule == "cosine":
        def bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - bar((i + 1) / steps) / bar(i / steps), 0.999) for i in range(steps)], dtype=np.float64)
    raise ValueError(f"flags: --noise_schedule expects linear or cosine, got {noise_schedule!r}")


__all__ = ["ADM", "ADMConfig", "PRESETS", "CODEBASES", "parse_flags", "config_from_flags", "betas"]
