"""Feature networks for sample quality, trained here on data that installs offline.

Inception features (FID's) are downloaded at run time by every FID package; these machines
cannot download. For MNIST-like data the field measures instead in the features of a
classifier trained on the data itself. Each network here is a small CNN; its feature
layer is the penultimate activation (after ReLU). The weights ship in the package, made
by `python -m fastddpm.metrics.train_features --data NAME`, with their test accuracy in
the JSON beside them.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class FeatureConfig:
    image_size: int  # square images, 1 channel
    widths: tuple  # channels of the conv stages (each: two 3x3 convs, then 2x2 max-pool)
    features: int  # the feature layer's width
    classes: int = 10


CONFIGS = {
    "fashion-mnist": FeatureConfig(image_size=28, widths=(32, 64), features=128),
    "digits": FeatureConfig(image_size=8, widths=(16, 32), features=64),
}


class FeatureNet(nn.Module):
    """(N, 1, S, S) images in [-1, 1] -> logits; `features(x)` -> (N, features)."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.cfg = cfg
        layers, c = [], 1
        for w in cfg.widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.conv = nn.Sequential(*layers)
        side = cfg.image_size >> len(cfg.widths)
        self.fc = nn.Linear(c * side * side, cfg.features)
        self.head = nn.Linear(cfg.features, cfg.classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.features(x), 0.3, self.training))


def weights_path(data: str) -> Path:
    return WEIGHTS / f"{data}.safetensors"


def load(data: str) -> FeatureNet:
    """The shipped feature network of `data`, in eval mode, on the CPU (offline: a missing
    file is a clear error naming the command that makes it)."""
    from safetensors.torch import load_file

    if data not in CONFIGS:
        raise ValueError(f"data: expected one of {sorted(CONFIGS)}, got {data!r}")
    path = weights_path(data)
    if not path.exists():
        raise FileNotFoundError(f"feature network for {data!r} not found at {path}: make it with "
                                f"`python -m fastddpm.metrics.train_features --data {data}`")
    net = FeatureNet(CONFIGS[data])
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})  # stored in float16
    return net.eval().requires_grad_(False)


def network_hash(data: str) -> str:
    """sha256 (first 16 hex) of the shipped weights file: keys cached statistics and reports."""
    return hashlib.sha256(weights_path(data).read_bytes()).hexdigest()[:16]


def card(data: str) -> dict:
    """The JSON recorded beside the weights: command, accuracy, config."""
    p = weights_path(data).with_suffix(".json")
    return json.loads(p.read_text()) if p.exists() else {}


def config_dict(cfg: FeatureConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
