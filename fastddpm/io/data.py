"""Offline image datasets in [-1, 1], and the checks every training set must pass.

Nothing here downloads: Fashion-MNIST comes from Debian's `dataset-fashion-mnist`
package (IDX files under /usr/share/datasets/fashion-mnist), the 8x8 digits from
scikit-learn's bundled `load_digits`.
"""

import gzip
import struct
import warnings
from pathlib import Path

import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path) -> torch.Tensor:
    """An IDX file (optionally gzipped) as a uint8 tensor of its stated shape."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = raw[4 + 4 * ndim :]
    n = 1
    for d in dims:
        n *= d
    if len(data) != n:
        raise ValueError(f"{path}: header says {dims} ({n} bytes) but holds {len(data)} bytes")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(*dims)


def fashion_mnist(split: str = "train", root=FASHION_MNIST_DIR) -> torch.Tensor:
    """Fashion-MNIST images, (N, 1, 28, 28) float32 in [-1, 1]."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split: expected 'train' or 't10k', got {split!r}")
    root = Path(root)
    candidates = [root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-images-idx3-ubyte"]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {root}: install Debian's package with "
            "`apt-get install dataset-fashion-mnist` (it ships the IDX files offline)"
        )
    return read_idx(path).unsqueeze(1).float().div_(127.5).sub_(1.0)


def fashion_mnist_labels(split: str = "train", root=FASHION_MNIST_DIR) -> torch.Tensor:
    """Fashion-MNIST's class labels (N,) int64, from the same Debian package."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split: expected 'train' or 't10k', got {split!r}")
    root = Path(root)
    path = next((p for p in (root / f"{split}-labels-idx1-ubyte.gz", root / f"{split}-labels-idx1-ubyte") if p.exists()), None)
    if path is None:
        raise FileNotFoundError(f"Fashion-MNIST labels not found under {root}: `apt-get install dataset-fashion-mnist`")
    return read_idx(path).long()


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("--data digits needs scikit-learn: pip install 'fastddpm[digits]'") from e
    return load_digits()


def digits() -> torch.Tensor:
    """scikit-learn's 8x8 digits (1,797 images, pixel values 0..16), (N, 1, 8, 8) in [-1, 1]."""
    images = torch.from_numpy(_load_digits().images).float()
    return images.unsqueeze(1).div_(8.0).sub_(1.0)


DIGITS_TEST = 360  # the held-out split: a fixed fifth of the 1,797 digits


def labelled(data: str, split: str) -> tuple:
    """(images (N, 1, S, S) in [-1, 1], labels (N,)) of a named split: "train" or "test".

    fashion-mnist: the official 60k/10k split. digits: a fixed permutation (seed 0) of the
    1,797 images; the first 360 are the held-out test split, the rest train. Training the
    DDPM on all the digits (the CLI does) means only the feature network, not the DDPM,
    has not seen the test split: say so where it matters."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if data == "fashion-mnist":
        s = "train" if split == "train" else "t10k"
        return fashion_mnist(s), fashion_mnist_labels(s)
    if data == "digits":
        d = _load_digits()
        perm = torch.randperm(len(d.target), generator=torch.Generator().manual_seed(0))
        idx = perm[:DIGITS_TEST] if split == "test" else perm[DIGITS_TEST:]
        images = torch.from_numpy(d.images).float().unsqueeze(1).div_(8.0).sub_(1.0)
        return images[idx], torch.from_numpy(d.target).long()[idx]
    raise ValueError(f"data: expected one of {sorted(DATASETS)}, got {data!r}")


DATASETS = {"digits": digits, "fashion-mnist": fashion_mnist}


def load(name: str) -> torch.Tensor:
    if name not in DATASETS:
        raise ValueError(f"data: expected one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]()


CLASSES = {"digits": 10, "fashion-mnist": 10}


def load_labelled(name: str) -> tuple:
    """(images, labels) of what `load(name)` trains on: all the digits, Fashion-MNIST's train split."""
    if name == "digits":
        return digits(), torch.from_numpy(_load_digits().target).long()
    if name == "fashion-mnist":
        return fashion_mnist("train"), fashion_mnist_labels("train")
    raise ValueError(f"data: expected one of {sorted(DATASETS)}, got {name!r}")


def as_images_and_labels(data) -> tuple:
    """(images (N, C, H, W), labels (N,) or None) from a tensor of images, an (images, labels)
    pair, a TensorDataset of one or two tensors, or an iterable of image batches or pairs."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
        return data[0], data[1]
    if isinstance(data, torch.utils.data.TensorDataset):
        return data.tensors[0], (data.tensors[1] if len(data.tensors) > 1 else None)
    if isinstance(data, torch.Tensor):
        return data, None
    try:
        items = list(iter(data))
    except TypeError:
        raise TypeError(f"data: expected a tensor, an (images, labels) pair, a TensorDataset or an iterable of batches, "
                        f"got {type(data).__name__}") from None
    pairs = [isinstance(b, (tuple, list)) and len(b) >= 2 for b in items]
    if items and all(pairs):
        return (torch.cat([b[0] if b[0].dim() == 4 else b[0].unsqueeze(0) for b in items]),
                torch.cat([torch.as_tensor(b[1]).reshape(-1) for b in items]))
    return as_images(items), None


def as_images(data) -> torch.Tensor:
    """One (N, C, H, W) tensor from a tensor, a TensorDataset, or any dataset/DataLoader
    yielding image batches (or (images, labels) pairs). The set is held in memory."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, torch.utils.data.TensorDataset):
        return data.tensors[0]
    try:
        items = iter(data)
    except TypeError:
        raise TypeError(f"data: expected a tensor, a TensorDataset or an iterable of image batches, got {type(data).__name__}") from None
    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in items]
    if not batches or not all(isinstance(b, torch.Tensor) for b in batches):
        raise TypeError("data: expected it to yield image tensors (or (images, labels) pairs)")
    return torch.cat([b if b.dim() == 4 else b.unsqueeze(0) for b in batches])


def check_images(x: torch.Tensor, in_channels=None, what: str = "data", sample_size=None) -> None:
    """Training images must be a non-empty (N, C, H, W) float batch in [-1, 1], with the
    model's channels and image size when those are given.

    Far outside [-1, 1] (beyond ±1.5: 0..255 pixels, unnormalised features) is an
    error; all of it inside [0, 1] draws a warning, since DDPM expects [-1, 1] and a
    [0, 1] set trains a model whose samples come out washed grey.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{what}: expected images (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    if x.numel() == 0:
        raise ValueError(f"{what}: expected a non-empty set of images, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected floating-point images in [-1, 1], got {x.dtype}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{what}: images have {x.shape[1]} channels, the model expects in_channels={in_channels}")
    if sample_size is not None:
        hw = tuple(sample_size) if isinstance(sample_size, (tuple, list)) else (sample_size, sample_size)
        if tuple(x.shape[2:]) != hw:
            raise ValueError(f"{what}: images are {x.shape[2]}x{x.shape[3]}, the model expects sample_size={sample_size}")
    lo, hi = float(x.min()), float(x.max())
    if not (lo == lo and hi == hi) or lo < -1.5 or hi > 1.5:
        raise ValueError(f"{what}: expected images in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; scale them (e.g. x / 127.5 - 1)")
    if lo >= 0.0:
        warnings.warn(f"{what}: every value lies in [0, {hi:.3g}]; DDPM expects [-1, 1] (x * 2 - 1)", stacklevel=3)
