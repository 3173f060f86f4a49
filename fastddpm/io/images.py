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


def save_grid(x, path, nrow: int = None, scale: int = 1, layout: str = "auto") -> Path:
    """Images -> a PNG grid at `path`. x: samples (B, C, H, W) floats in [-1, 1] (a Sampler's
    output), or uint8 images (a generate shard's NHWC array, or to_uint8's NCHW), a tensor or
    a NumPy array. layout: "auto" (uint8: NHWC when the last axis is 1, 3 or 4 channels and the
    second is not, NCHW the other way round), "nchw" or "nhwc". Non-finite samples are an error."""
    for name, v in (("nrow", nrow), ("scale", scale)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return write_png(grid(as_samples(x, layout), nrow, scale=scale), path)


def as_samples(x, layout: str = "auto") -> torch.Tensor:
    """(B, C, H, W) floats in [-1, 1] from what save_grid accepts, or a clear error."""
    import numpy as np

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor or a NumPy array of images, got {type(x).__name__}")
    if layout not in ("auto", "nchw", "nhwc"):
        raise ValueError(f"layout: expected 'auto', 'nchw' or 'nhwc', got {layout!r}")
    if x.dim() != 4 or x.numel() == 0:
        raise ValueError(f"x: expected a non-empty batch of images (B, C, H, W) or (B, H, W, C), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if layout == "auto":
            last, second = x.shape[-1] in (1, 3, 4), x.shape[1] in (1, 3, 4)
            if last == second:
                raise ValueError(f"x: uint8 images of shape {tuple(x.shape)} could be NCHW or NHWC; pass layout='nchw' or 'nhwc'")
            layout = "nhwc" if last else "nchw"
        x = x.permute(0, 3, 1, 2) if layout == "nhwc" else x
        return x.float() / 127.5 - 1
    if not x.is_floating_point():
        raise TypeError(f"x: expected float samples in [-1, 1] or uint8 images, got {x.dtype}")
    if layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x: {int((~torch.isfinite(x)).sum())} values are NaN or infinite: no picture of them")
    return x


def read_png(path) -> torch.Tensor:
    """An 8-bit, non-interlaced PNG (grey, grey+alpha, RGB or RGBA) as (C, H, W) uint8, alpha
    dropped; every chunk's CRC checked, so a damaged file is a clear error naming it."""
    import numpy as np

    path = Path(path)
    raw = path.read_bytes()
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(raw):
        if pos + 8 > len(raw):
            raise ValueError(f"{path}: truncated PNG")
        n, kind = struct.unpack(">I", raw[pos : pos + 4])[0], raw[pos + 4 : pos + 8]
        data = raw[pos + 8 : pos + 8 + n]
        crc = raw[pos + 8 + n : pos + 12 + n]
        if len(data) != n or len(crc) != 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + data) & 0xFFFFFFFF:
            raise ValueError(f"{path}: damaged PNG (chunk {kind!r} is truncated or fails its CRC)")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat.append(data)
        elif kind == b"IEND":
            break
        pos += 12 + n
    if header is None or not idat:
        raise ValueError(f"{path}: damaged PNG (no IHDR or no image data)")
    W, H, depth, ctype, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs are read, got depth {depth}, colour type {ctype}")
    try:
        flat = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"{path}: damaged PNG ({e})") from e
    stride = W * channels
    if len(flat) != H * (stride + 1):
        raise ValueError(f"{path}: damaged PNG (image data of {len(flat)} bytes for {W}x{H})")
    rows = np.frombuffer(flat, dtype=np.uint8).reshape(H, stride + 1)
    out = np.zeros((H, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(H):  # undo the per-row filters (PNG spec 9.2)
        f, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        elif f in (1, 3, 4):
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = cur[x - channels] if x >= channels else 0
                b, c = prev[x], (prev[x - channels] if x >= channels else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) >> 1
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 0xFF
        else:
            raise ValueError(f"{path}: damaged PNG (row filter {f})")
        out[y], prev = cur, cur
    img = torch.from_numpy(out.astype(np.uint8).reshape(H, W, channels)).permute(2, 0, 1)
    return img[:1] if channels in (1, 2) else img[:3]
