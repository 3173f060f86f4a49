"""Samples to pictures: uint8 conversion and a PNG grid writer (zlib only, no Pillow)."""

import struct
import zlib
from pathlib import Path

import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) floats in [-1, 1] -> (B, C, H, W) uint8 in [0, 255], on the CPU."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def grid(x: torch.Tensor, nrow: int = None, pad: int = 2, scale: int = 1) -> torch.Tensor:
    """Tile (B, C, H, W) images, each enlarged `scale` times (nearest), into one uint8
    picture (C, rows*(sH+pad)+pad, nrow*(sW+pad)+pad)."""
    img = to_uint8(x)
    if scale > 1:
        img = img.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    B, C, H, W = img.shape
    nrow = nrow or max(1, int(round(B**0.5)))
    rows = (B + nrow - 1) // nrow
    out = torch.zeros(C, rows * (H + pad) + pad, nrow * (W + pad) + pad, dtype=torch.uint8)
    for k in range(B):
        r, c = divmod(k, nrow)
        out[:, pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = img[k]
    return out


def write_png(img: torch.Tensor, path) -> Path:
    """Write a (C, H, W) uint8 picture, C = 1 (grey) or 3 (RGB), as an 8-bit PNG."""
    C, H, W = img.shape
    if C not in (1, 3) or img.dtype != torch.uint8:
        raise ValueError(f"img: expected uint8 (1 or 3, H, W), got {img.dtype} {tuple(img.shape)}")
    rows = img.permute(1, 2, 0).reshape(H, W * C).numpy()
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 8, 0 if C == 1 else 2, 0, 0, 0)
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return path


def save_grid(x: torch.Tensor, path, nrow: int = None, scale: int = 1) -> Path:
    """Samples (B, C, H, W) in [-1, 1] -> a PNG grid at `path`."""
    return write_png(grid(x, nrow, scale=scale), path)
