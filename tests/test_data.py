"""Offline datasets: the IDX reader, Fashion-MNIST from Debian's package, the digits."""

import gzip
import struct

import pytest
import torch

from fastddpm.io import data


def _idx(path, array: torch.Tensor, compress: bool):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    raw = header + array.numpy().tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    a = torch.randint(0, 256, (5, 4, 3), dtype=torch.uint8)
    path = _idx(tmp_path / ("x.gz" if compress else "x"), a, compress)
    assert torch.equal(data.read_idx(path), a)


def test_read_idx_rejects_damage(tmp_path):
    a = torch.zeros(2, 3, dtype=torch.uint8)
    path = _idx(tmp_path / "x", a, False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"header says \(2, 3\) \(6 bytes\) but holds 5 bytes"):
        data.read_idx(path)
    (tmp_path / "y").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        data.read_idx(tmp_path / "y")


def test_fashion_mnist_missing_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(root=tmp_path)


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")
def test_fashion_mnist_from_the_debian_package():
    x = data.fashion_mnist("t10k")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0


def test_digits():
    x = data.digits()
    assert x.shape == (1797, 1, 8, 8) and x.min() == -1.0 and x.max() == 1.0
    with pytest.raises(ValueError, match="data: expected one of"):
        data.load("cifar10")


def test_as_images_accepts_tensors_datasets_and_loaders():
    x = torch.rand(10, 1, 4, 4) * 2 - 1
    ds = torch.utils.data.TensorDataset(x, torch.arange(10))
    assert data.as_images(x) is x
    assert torch.equal(data.as_images(ds), x)
    assert torch.equal(data.as_images(torch.utils.data.DataLoader(ds, batch_size=3)), x)
    with pytest.raises(TypeError, match="data: expected a tensor, a TensorDataset or an iterable"):
        data.as_images(42)
