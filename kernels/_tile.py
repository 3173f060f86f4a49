"""Tiling, both halves: the launch that covers a batch (host) and what each program owns (device).

Grid: one program per (sample b, channel group g, pixel tile), b-major. A program reads one
timestep, one seed and one table row, and makes one Philox call per pixel of its tile: the
four words feed channels 4g .. 4g+3 of that pixel (docs/noise.md).

Layout: every image operand is a dense NCHW or a dense NHWC tensor (the launcher checks),
passed to the kernel as a compile-time flag beside the channel count C, so every stride is
known to the compiler: an NCHW channel plane is contiguous in the pixel index (vector loads),
NHWC pixels lie C elements apart. Lane j of a group exists statically when G == 1 (C <= 4:
images, latents) and is masked per program otherwise.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .philox import randn4

MAX_BLOCK = 512  # pixels a program, 4 a thread at 4 warps
MAX_REGISTERS = 64  # a thread's registers: half the SM's warps resident; ptxas fits every variant, no spills (bench --static)


@dataclass(frozen=True)
class Launch:
    """The launch geometry of one call, computed once from the batch's shape."""

    B: int
    C: int
    HW: int
    G: int  # channel groups of 4
    tiles: int  # pixel tiles per (sample, group)
    block: int  # pixels per program
    warps: int

    @property
    def grid(self) -> tuple:
        return (self.B * self.G * self.tiles,)

    def meta(self, heavy: bool = False) -> dict:
        """The compile-time parameters every kernel takes, and its launch options. TILES is
        one too (one compile per image size): the program's tile is then a shift or a
        multiply, not a 20-instruction integer division. heavy: a variant that needs more
        than 64 registers at 4 pixels a thread (a multistep step that also draws noise or
        reads a guided pair) runs 2 pixels a thread, twice the warps, rather than spill."""
        return dict(C=self.C, G=self.G, TILES=self.tiles, BLOCK=self.block, num_warps=self.num_warps(heavy),
                    maxnreg=MAX_REGISTERS)

    def num_warps(self, heavy: bool = False) -> int:
        return self.warps * 2 if heavy and self.block >= 64 * self.warps else self.warps


def geometry(B: int, C: int, HW: int) -> Launch:
    block = min(MAX_BLOCK, triton.next_power_of_2(max(HW, 16)))
    warps = max(1, block // 128)
    return Launch(B, C, HW, (C + 3) // 4, triton.cdiv(HW, block), block, warps)


def launch(x: torch.Tensor) -> Launch:
    B, C, H, W = x.shape
    return geometry(B, C, H * W)


def channels_last(x: torch.Tensor) -> bool:
    """The layout flag of a dense image (checked before): NHWC unless it is also NCHW."""
    return not x.is_contiguous()


# --------------------------------------------------------------------------- device


@triton.jit
def tile(TILES: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr):
    """-> (pid, b, g, p): program id, sample, channel group (a constant 0 when G == 1),
    (BLOCK,) pixel indices."""
    pid = tl.program_id(0)
    p = (pid % TILES) * BLOCK + tl.arange(0, BLOCK)
    if G == 1:
        return pid, pid // TILES, 0, p
    else:
        return pid, pid // (G * TILES), (pid // TILES) % G, p


@triton.jit
def lane_mask(p, HW, c, C: tl.constexpr, G: tl.constexpr):
    """Pixel p lies in the image and channel c exists. With G == 1 a missing channel's
    lane is not compiled at all (`if C > j` at the call), so only the pixel test remains."""
    if G == 1:
        return p < HW
    else:
        return p < tl.where(c < C, HW, 0)  # a block mask: the interpreter rejects block & scalar


@triton.jit
def at(ptr, b, c, p, HW, C: tl.constexpr, CL: tl.constexpr):
    """Pointers to channel c at pixels p of sample b: NHWC if CL else NCHW."""
    base = ptr + b.to(tl.int64) * (C * HW)
    if CL:
        return base + p * C + c
    else:
        return base + c * HW + p


@triton.jit
def row_index(k, ROWS):
    """-> (k, 0.0) for a row k in [0, ROWS); (0, NaN) otherwise. Adding the second value to
    every coefficient read from the row turns an out-of-range k into NaN results: never a
    read outside the table."""
    ok = (k >= 0) & (k < ROWS)
    return tl.where(ok, k, 0), tl.where(ok, 0.0, float("nan"))


@triton.jit
def noise4(seed_ptr, b, p, g, t, stream, DRAW: tl.constexpr, BLOCK: tl.constexpr):
    """The normals of channels 4g .. 4g+3 at pixels p, drawn from sample b's seed when DRAW;
    zeros (unused) otherwise."""
    if DRAW:
        return randn4(tl.load(seed_ptr + b), p, g, t, stream)
    else:
        z = tl.zeros([BLOCK], tl.float32)
        return z, z, z, z
