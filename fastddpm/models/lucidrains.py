"""denoising-diffusion-pytorch's Unet (lucidrains, the 2.x architecture), with the package's own
module names, so a `Trainer`'s `results/model-N.pt` loads as it is.

    net = LucidUnet(LucidConfig.infer(ema_state))   # every size read from the weights

Why the architecture here rather than the package as an extra: the package imports torchvision
(and pytorch-fid, accelerate, ...) at module level, and PyPI's torchvision does not load with
every torch a user has (not the CPU torch these machines run); sampling needs none of that. Its
Unet is small: RMSNorm'd conv blocks with scale-shift time conditioning, linear attention on the
outer levels and full attention (with learned memory key/values) on the innermost and the middle.
Every size — dim, init_dim, dim_mults, heads and head width per level, which levels attend
fully — is read from the state dict's shapes; only the sinusoidal embedding's θ and the image
size are not in the file. Equal to the package's Unet with the same weights: tests/test_lucidrains.py.
"""

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LucidConfig:
    dim: int
    init_dim: int
    dim_mults: tuple
    channels: int = 3
    full_attn: tuple = None  # per level: full attention (True) or linear (False)
    attn_heads: tuple = None  # per level
    attn_dim_head: tuple = None  # per level
    mid_heads: int = 4
    mid_dim_head: int = 32
    num_mem_kv: int = 4
    theta: float = 10000.0  # SinusoidalPosEmb's θ (sinusoidal_pos_emb_theta): not in the weights
    image_size: int = None  # GaussianDiffusion's image_size: not in the weights either
    null_label: bool = False

    @property
    def sample_size(self):
        return self.image_size

    @property
    def in_channels(self):
        return self.channels

    num_classes = None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def infer(cls, sd: dict, theta: float = 10000.0, image_size: int = None) -> "LucidConfig":
        """The Unet a state dict (the Unet's own keys) was saved from; a ValueError naming the
        key where it is not the 2.x Unet fastddpm implements."""
        def need(key):
            if key not in sd:
                raise ValueError(f"model: the weights have no {key}, which denoising-diffusion-pytorch 2.x's Unet has")
            return sd[key]

        if any(k.startswith("time_mlp.0.") for k in sd):
            raise ValueError("model: the Unet uses learned or random sinusoidal time features (learned_sinusoidal_cond / "
                             "random_fourier_features), which its GaussianDiffusion itself refuses")
        out_dim, in_ch = need("final_conv.weight").shape[0], need("init_conv.weight").shape[1]
        if in_ch == 2 * out_dim:
            raise ValueError("model: the Unet is self-conditioned (self_condition=True: its input is x and its own previous "
                             "x̂_0), which fastddpm does not sample")
        if in_ch != out_dim:
            raise ValueError(f"model: the Unet takes {in_ch} channels and outputs {out_dim} (learned variance?), which "
                             f"GaussianDiffusion refuses")
        init_dim = need("init_conv.weight").shape[0]
        dim = need("time_mlp.1.weight").shape[1]
        levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"downs\.(\d+)\.", k)] if m})
        dims, full, heads, head_dim = [init_dim], [], [], []
        for i in levels:
            last = i == len(levels) - 1
            w = need(f"downs.{i}.3.weight" if last else f"downs.{i}.3.1.weight")
            dims.append(w.shape[0])
            mem = need(f"downs.{i}.2.mem_kv")
            is_full = f"downs.{i}.2.to_out.weight" in sd
            full.append(is_full)
            heads.append(mem.shape[1])
            head_dim.append(mem.shape[3] if is_full else mem.shape[2])
        if any(d % dim for d in dims[1:]):
            raise ValueError(f"model: level widths {dims[1:]} are not multiples of dim={dim}")
        mid = need("mid_attn.mem_kv")
        return cls(dim=dim, init_dim=init_dim, dim_mults=tuple(d // dim for d in dims[1:]), channels=out_dim,
                   full_attn=tuple(full), attn_heads=tuple(heads), attn_dim_head=tuple(head_dim), mid_heads=mid.shape[1],
                   mid_dim_head=mid.shape[3], num_mem_kv=mid.shape[2], theta=float(theta), image_size=image_size)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = dim**0.5
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.g * self.scale


class SinusoidalPosEmb(nn.Module):
    """sin then cos, frequencies θ^(−i/(half − 1)) (the package's, not OpenAI's i/half)."""

    def __init__(self, dim, theta=10000.0):
        super().__init__()
        self.dim, self.theta = dim, theta

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(self.theta) / (half - 1)))
        args = t[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class Block(nn.Module):
    def __init__(self, dim, dim_out):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = RMSNorm(dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim, dim_out, time_emb_dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1, self.block2 = Block(dim, dim_out), Block(dim_out, dim_out)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, t):
        scale_shift = self.mlp(t)[:, :, None, None].chunk(2, dim=1)
        return self.block2(self.block1(x, scale_shift)) + self.res_conv(x)


class LinearAttention(nn.Module):
    def __init__(self, dim, heads, dim_head, num_mem_kv):
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        hidden = dim_head * heads
        self.norm = RMSNorm(dim)
        self.mem_kv = nn.Parameter(torch.zeros(2, heads, dim_head, num_mem_kv))
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), RMSNorm(dim))

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (u.reshape(b, self.heads, -1, h * w) for u in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        mk, mv = (m.unsqueeze(0).expand(b, -1, -1, -1) for m in self.mem_kv)
        k, v = torch.cat((mk, k), dim=-1), torch.cat((mv, v), dim=-1)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head, num_mem_kv):
        super().__init__()
        self.heads = heads
        hidden = dim_head * heads
        self.norm = RMSNorm(dim)
        self.mem_kv = nn.Parameter(torch.zeros(2, heads, num_mem_kv, dim_head))
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (u.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for u in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        mk, mv = (m.unsqueeze(0).expand(b, -1, -1, -1) for m in self.mem_kv)
        k, v = torch.cat((mk, k), dim=-2), torch.cat((mv, v), dim=-2)
        out = F.scaled_dot_product_attention(q, k, v)  # scale d^-½, as its Attend
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class _Down(nn.Sequential):
    """Rearrange 'b c (h 2) (w 2) -> b (c 2 2) h w', then a 1×1 conv: the package's Downsample,
    a Sequential whose index 1 is the conv (its keys: ….3.1.weight)."""

    def __init__(self, dim, dim_out):
        super().__init__(nn.Identity(), nn.Conv2d(dim * 4, dim_out, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        return self[1](x)


class _Up(nn.Sequential):
    """Nearest ×2, then a 3×3 conv: the package's Upsample (index 1 the conv)."""

    def __init__(self, dim, dim_out):
        super().__init__(nn.Identity(), nn.Conv2d(dim, dim_out, 3, padding=1))

    def forward(self, x):
        return self[1](F.interpolate(x, scale_factor=2, mode="nearest"))


class LucidUnet(nn.Module):
    """The package's Unet: forward(x, t) -> (B, channels, H, W), t the integer timestep."""

    def __init__(self, config: LucidConfig):
        super().__init__()
        if not isinstance(config, LucidConfig):
            raise TypeError(f"config: expected a LucidConfig, got {type(config).__name__}")
        self.config = c = config
        time_dim = c.dim * 4
        self.init_conv = nn.Conv2d(c.channels, c.init_dim, 7, padding=3)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(c.dim, c.theta), nn.Linear(c.dim, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))
        dims = [c.init_dim, *(c.dim * m for m in c.dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        n = len(in_out)
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            attn = (Attention if c.full_attn[i] else LinearAttention)(d_in, c.attn_heads[i], c.attn_dim_head[i], c.num_mem_kv)
            self.downs.append(nn.ModuleList([ResnetBlock(d_in, d_in, time_dim), ResnetBlock(d_in, d_in, time_dim), attn,
                                             _Down(d_in, d_out) if i < n - 1 else nn.Conv2d(d_in, d_out, 3, padding=1)]))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim)
        self.mid_attn = Attention(mid, c.mid_heads, c.mid_dim_head, c.num_mem_kv)
        self.mid_block2 = ResnetBlock(mid, mid, time_dim)
        for j, (d_in, d_out) in enumerate(reversed(in_out)):
            i = n - 1 - j
            attn = (Attention if c.full_attn[i] else LinearAttention)(d_out, c.attn_heads[i], c.attn_dim_head[i], c.num_mem_kv)
            self.ups.append(nn.ModuleList([ResnetBlock(d_out + d_in, d_out, time_dim), ResnetBlock(d_out + d_in, d_out, time_dim),
                                           attn, _Up(d_out, d_in) if j < n - 1 else nn.Conv2d(d_out, d_in, 3, padding=1)]))
        self.final_res_block = ResnetBlock(c.init_dim * 2, c.init_dim, time_dim)
        self.final_conv = nn.Conv2d(c.init_dim, c.channels, 1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, t):
        x = self.init_conv(x)
        r = x.clone()
        emb = self.time_mlp[0](t.float()).to(self.time_mlp[1].weight.dtype)  # the sinusoid in float32
        t = self.time_mlp[1:](emb)
        h = []
        for block1, block2, attn, down in self.downs:
            x = block1(x, t)
            h.append(x)
            x = block2(x, t)
            x = attn(x) + x
            h.append(x)
            x = down(x)
        x = self.mid_block1(x, t)
        x = self.mid_attn(x) + x
        x = self.mid_block2(x, t)
        for block1, block2, attn, up in self.ups:
            x = block1(torch.cat((x, h.pop()), dim=1), t)
            x = block2(torch.cat((x, h.pop()), dim=1), t)
            x = attn(x) + x
            x = up(x)
        x = self.final_res_block(torch.cat((x, r), dim=1), t)
        return self.final_conv(x)
