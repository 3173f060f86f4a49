"""The DDPM U-Net of Ho et al. (2020), in diffusers' UNet2DModel layout.

Residual blocks (GroupNorm, SiLU, 3x3 convs, a projected timestep embedding), self-
attention at chosen resolutions through F.scaled_dot_product_attention, strided-conv
down-sampling, nearest + conv up-sampling, skip connections. Module names follow
diffusers' state dict key for key, so `UNet.from_diffusers` is a config translation
plus a strict `load_state_dict`: a model trained with diffusers runs here unchanged.
"""

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Ho et al.'s hyper-parameters; defaults are the CIFAR-10 model (35,746,307 params)."""

    in_channels: int = 3
    out_channels: int = 3
    sample_size: int = 32
    base_channels: int = 128
    channel_mult: tuple = (1, 2, 2, 2)
    layers_per_block: int = 2  # residual blocks per level on the way down (+1 on the way up)
    attn_resolutions: tuple = (16,)  # feature-map sizes with self-attention after each block
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dropout: float = 0.0  # Ho et al. trained CIFAR-10 with 0.1
    attention_head_dim: Optional[int] = None  # None: one head as wide as the level
    downsample_padding: int = 0  # 0: pad right/bottom by 1, then a stride-2 3x3 conv
    flip_sin_to_cos: bool = False
    freq_shift: int = 1
    num_classes: Optional[int] = None  # class-conditional: N classes + one "null" label (index N), diffusers' num_class_embeds = N + 1

    def __post_init__(self):
        def positive(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")

        for name in ("in_channels", "out_channels", "sample_size", "base_channels", "layers_per_block", "norm_groups"):
            positive(name)
        cm = self.channel_mult
        if not isinstance(cm, (tuple, list)) or not cm or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in cm):
            raise ValueError(f"channel_mult: expected a non-empty tuple of positive ints, got {cm!r}")
        ar = self.attn_resolutions
        if not isinstance(ar, (tuple, list)) or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ar):
            raise ValueError(f"attn_resolutions: expected a tuple of positive ints (feature-map sizes), got {ar!r}")
        levels = [self.sample_size >> i for i in range(len(self.channel_mult))] if isinstance(self.sample_size, int) else []
        if levels and any(r not in levels for r in ar):
            raise ValueError(f"attn_resolutions: {tuple(ar)} names sizes no level has; this U-Net's feature maps are "
                             f"{tuple(levels)} (sample_size {self.sample_size} halved at each of {len(levels)} levels)")
        if not (isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1):
            raise ValueError(f"norm_eps: expected a number in (0, 1), got {self.norm_eps!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.attention_head_dim is not None and (isinstance(self.attention_head_dim, bool) or not isinstance(self.attention_head_dim, int)
                                                    or self.attention_head_dim < 1):
            raise ValueError(f"attention_head_dim: expected None or a positive int, got {self.attention_head_dim!r}")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"downsample_padding: expected 0 or 1, got {self.downsample_padding!r}")
        if not isinstance(self.flip_sin_to_cos, bool):
            raise TypeError(f"flip_sin_to_cos: expected True or False, got {self.flip_sin_to_cos!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 1):
            raise ValueError(f"num_classes: expected None (unconditional) or a positive int, got {self.num_classes!r}")
        if isinstance(self.freq_shift, bool) or not isinstance(self.freq_shift, int) or self.freq_shift >= self.base_channels // 2:
            raise ValueError(f"freq_shift: expected an int below base_channels / 2, got {self.freq_shift!r}")
        self.validate()

    @classmethod
    def cifar10(cls) -> "UNetConfig":
        return cls()

    @property
    def block_out_channels(self) -> tuple:
        return tuple(self.base_channels * m for m in self.channel_mult)

    def attention_at(self, level: int) -> bool:
        return (self.sample_size >> level) in self.attn_resolutions

    def validate(self) -> None:
        for c in self.block_out_channels:
            if c % self.norm_groups:
                raise ValueError(f"channel_mult: every level's width must be a multiple of norm_groups={self.norm_groups}, got {c}")
        if self.sample_size % (1 << (len(self.channel_mult) - 1)):
            raise ValueError(f"sample_size: {self.sample_size} must divide by 2**{len(self.channel_mult) - 1} (one halving per level)")


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: int) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) fp32, computed on t's device
    (Vaswani et al.; the frequencies of diffusers' get_timestep_embedding)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    arg = t.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(arg), torch.sin(arg)] if flip_sin_to_cos else [torch.sin(arg), torch.cos(arg)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, out)
        self.linear_2 = nn.Linear(out, out)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, cfg: UNetConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, cin, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, cout, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):  # x (B, Cin, H, W), temb (B, 4*base) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Spatial self-attention with a residual, over the H*W positions."""

    def __init__(self, c: int, cfg: UNetConfig):
        super().__init__()
        head_dim = cfg.attention_head_dim or c
        if c % head_dim:
            raise ValueError(f"attention_head_dim: {head_dim} must divide the width {c}")
        self.heads = c // head_dim
        self.group_norm = nn.GroupNorm(cfg.norm_groups, c, eps=cfg.norm_eps)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c), nn.Dropout(0.0)])

    def forward(self, x):  # (B, C, H, W)
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(h).view(B, H * W, self.heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        o = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        o = self.to_out[0](o.transpose(1, 2).reshape(B, H * W, C))
        return x + o.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, c: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=padding)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.padding == 0 else x)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, cin, cout, temb, cfg, attention: bool, downsample: bool):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, temb, cfg) for i in range(n)])
        self.attentions = nn.ModuleList([Attention(cout, cfg) for _ in range(n)]) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(cout, cfg.downsample_padding)]) if downsample else None

    def forward(self, x, temb):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, cin, cout, cprev, temb, cfg, attention: bool, upsample: bool):
        super().__init__()
        n = cfg.layers_per_block + 1
        self.resnets = nn.ModuleList(
            [ResnetBlock((cprev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, temb, cfg) for i in range(n)]
        )
        self.attentions = nn.ModuleList([Attention(cout, cfg) for _ in range(n)]) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x, skips, temb):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    def __init__(self, c, temb, cfg):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, c, temb, cfg), ResnetBlock(c, c, temb, cfg)])
        self.attentions = nn.ModuleList([Attention(c, cfg)])

    def forward(self, x, temb):
        return self.resnets[1](self.attentions[0](self.resnets[0](x, temb)), temb)


class UNet(nn.Module):
    """ε_θ(x_t, t): (B, C, H, W) images and (B,) integer timesteps -> predicted noise."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config: expected a UNetConfig (UNetConfig(**d) from a dict), got {type(config).__name__}")
        config.validate()
        self.config = config
        ch = config.block_out_channels
        temb = 4 * ch[0]
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        # a learned embedding per class, added to the timestep's (diffusers' class_embedding); the
        # last row is the "null" label, the unconditional half of classifier-free guidance
        self.class_embedding = nn.Embedding(config.num_classes + 1, temb) if config.num_classes else None
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        levels = len(ch)
        self.down_blocks = nn.ModuleList(
            [DownBlock(ch[max(i - 1, 0)], ch[i], temb, config, config.attention_at(i), i < levels - 1) for i in range(levels)]
        )
        self.mid_block = MidBlock(ch[-1], temb, config)
        self.up_blocks = nn.ModuleList()
        for j in range(levels):
            i = levels - 1 - j  # the level this up block restores
            cprev = ch[min(i + 1, levels - 1)]
            self.up_blocks.append(UpBlock(ch[max(i - 1, 0)], ch[i], cprev, temb, config, config.attention_at(i), i > 0))
        self.conv_norm_out = nn.GroupNorm(config.norm_groups, ch[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], config.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ε̂ (or the model's prediction) for x (B, C, H, W) at timesteps t (B,); labels (B,) int
        in [0, num_classes] for a class-conditional model (num_classes: the null label)."""
        cfg = self.config
        self._check_input(x)
        self._check_labels(labels, x)
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, device=x.device)
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t  # a scalar t for the whole batch
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t: expected one timestep per image ({x.shape[0]},) or a scalar, got shape {tuple(t.shape)}")
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(emb.to(self.conv_in.weight.dtype))  # (B, 4*base)
        if self.class_embedding is not None:
            temb = temb + self.class_embedding(labels).to(temb.dtype)  # diffusers: emb + class_emb
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, s = block(h, temb)
            skips.extend(s)
        h = self.mid_block(h, temb)
        for block in self.up_blocks:
            h = block(h, skips, temb)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    def _check_input(self, x) -> None:
        """x (B, in_channels, H, W) in the weights' dtype, H and W halvable down every level."""
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x: expected images (B, {cfg.in_channels}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(f"x: expected {cfg.in_channels} channels (the model's in_channels), got {x.shape[1]} "
                             f"(shape {tuple(x.shape)})")
        step = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % step or x.shape[3] % step or x.shape[2] < step or x.shape[3] < step:
            raise ValueError(f"x: images of {x.shape[2]}x{x.shape[3]} cannot be halved {len(cfg.channel_mult) - 1} times; "
                             f"expected H and W multiples of {step} (the model was built for {cfg.sample_size}x{cfg.sample_size})")
        if x.dtype != self.conv_in.weight.dtype:
            raise TypeError(f"x: dtype {x.dtype}, but the model's weights are {self.conv_in.weight.dtype}; cast one to the "
                            f"other (x.to(...) or model.to(...))")

    def _check_labels(self, labels, x) -> None:
        n = self.config.num_classes
        if n is None:
            if labels is not None:
                raise ValueError("labels: this model is unconditional (num_classes=None); pass no labels")
            return
        if labels is None:
            raise ValueError(f"labels: this model is class-conditional (num_classes={n}); pass one label a sample "
                             f"({n} is the null label, the unconditional one)")
        if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"labels: expected an int32/int64 tensor of shape ({x.shape[0]},), got "
                            f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        if labels.shape != (x.shape[0],) or labels.device != x.device:
            raise ValueError(f"labels: expected shape ({x.shape[0]},) on {x.device}, got {tuple(labels.shape)} on {labels.device}")
        if not torch.compiler.is_compiling() and labels.device.type == "cpu" and labels.numel() and (
                int(labels.min()) < 0 or int(labels.max()) > n):
            raise ValueError(f"labels: expected classes in [0, {n}] ({n}: the null label), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")

    @classmethod
    def from_diffusers(cls, model) -> "UNet":
        """The equivalent fastddpm U-Net of a diffusers UNet2DModel (DownBlock2D /
        AttnDownBlock2D / UpBlock2D / AttnUpBlock2D), with its weights copied."""
        if not (hasattr(model, "config") and hasattr(model, "state_dict")):
            raise TypeError(f"model: expected a diffusers UNet2DModel (with .config and .state_dict()), got {type(model).__name__}")
        cfg = config_from_diffusers(model.config)
        net = cls(cfg).to(device=model.device, dtype=model.dtype)
        theirs = {k: v for k, v in model.state_dict().items() if not k.startswith("time_proj.")}
        net.load_state_dict(theirs, strict=True)
        return net

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return asdict(self.config)


_SUPPORTED = {
    "time_embedding_type": "positional",
    "act_fn": "silu",
    "mid_block_type": "UNetMidBlock2D",
    "downsample_type": "conv",
    "upsample_type": "conv",
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "attn_norm_num_groups": None,
    "center_input_sample": False,
    "time_embedding_dim": None,
    "mid_block_scale_factor": 1,
}


def config_from_diffusers(dc) -> UNetConfig:
    """Translate a UNet2DModel config; anything this U-Net does not implement is an error."""
    get = dc.get if isinstance(dc, dict) else (lambda k, d=None: getattr(dc, k, d))
    for key, want in _SUPPORTED.items():
        got = get(key, want)
        if got != want:
            raise ValueError(f"from_diffusers: config {key}={got!r} is not supported (only {want!r})")
    down, up = list(get("down_block_types")), list(get("up_block_types"))
    if any(b not in ("DownBlock2D", "AttnDownBlock2D") for b in down) or any(b not in ("UpBlock2D", "AttnUpBlock2D") for b in up):
        raise ValueError(f"from_diffusers: only DownBlock2D/AttnDownBlock2D/UpBlock2D/AttnUpBlock2D, got {down} / {up}")
    attn = [b == "AttnDownBlock2D" for b in down]
    if attn != [b == "AttnUpBlock2D" for b in reversed(up)]:
        raise ValueError(f"from_diffusers: attention must sit at the same levels down and up, got {down} / {up}")
    boc = list(get("block_out_channels"))
    if any(c % boc[0] for c in boc):
        raise ValueError(f"from_diffusers: block_out_channels {boc} must be multiples of the first")
    size = get("sample_size")
    size = size[0] if isinstance(size, (tuple, list)) else size
    if size is None:
        raise ValueError("from_diffusers: the model's config has no sample_size")
    k = get("num_class_embeds", None)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 2):
        raise ValueError(f"from_diffusers: num_class_embeds={k!r}: fastddpm reads it as N classes and a last, null one (>= 2)")
    return UNetConfig(
        num_classes=None if k is None else k - 1,
        in_channels=get("in_channels"),
        out_channels=get("out_channels"),
        sample_size=size,
        base_channels=boc[0],
        channel_mult=tuple(c // boc[0] for c in boc),
        layers_per_block=get("layers_per_block"),
        attn_resolutions=tuple(size >> i for i, a in enumerate(attn) if a),
        norm_groups=get("norm_num_groups"),
        norm_eps=get("norm_eps"),
        dropout=get("dropout", 0.0),
        attention_head_dim=get("attention_head_dim"),
        downsample_padding=get("downsample_padding"),
        flip_sin_to_cos=get("flip_sin_to_cos"),
        freq_shift=get("freq_shift"),
    )


def config_to_diffusers(c: UNetConfig) -> dict:
    """The UNet2DModel keyword arguments of this config (config_from_diffusers' inverse)."""
    levels = len(c.channel_mult)
    attn = [(c.sample_size >> i) in c.attn_resolutions for i in range(levels)]
    return dict(
        sample_size=c.sample_size, in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=tuple(c.base_channels * m for m in c.channel_mult), layers_per_block=c.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=c.norm_groups, norm_eps=c.norm_eps, dropout=c.dropout, attention_head_dim=c.attention_head_dim,
        downsample_padding=c.downsample_padding, flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift,
        num_class_embeds=None if c.num_classes is None else c.num_classes + 1,
        **_SUPPORTED,
    )


def forward_flops(model, shape=None, device="cpu", dtype=torch.float32) -> int:
    """FLOPs (2 per multiply-add) of one forward pass on one image (C, H, W; default: the model's
    config), counted by torch's FlopCounterMode; a class-conditional model is given a label."""
    from torch.utils.flop_counter import FlopCounterMode

    c = getattr(model, "config", None)
    shape = shape or (c.in_channels, c.sample_size, c.sample_size)
    x = torch.randn(1, *shape, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    labels = () if getattr(c, "num_classes", None) is None else (torch.zeros(1, dtype=torch.long, device=device),)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x, t, *labels)
    return fc.get_total_flops()
