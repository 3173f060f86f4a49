"""The prologue every kernel shares: which tile a program owns, its table row, its noise.

Grid: one program per (sample b, channel group g, pixel tile), b-major, so a program
reads one timestep and one seed and draws one Philox call per pixel of its tile.
"""

import triton
import triton.language as tl

from ._philox import randn4


@triton.jit
def tile(G, TILES, BLOCK: tl.constexpr):
    """-> (pid, b, g, p): program id, sample, channel group, (BLOCK,) pixel indices."""
    pid = tl.program_id(0)
    b = pid // (G * TILES)
    g = (pid // TILES) % G
    p = (pid % TILES) * BLOCK + tl.arange(0, BLOCK)
    return pid, b, g, p


@triton.jit
def table_row(tab_ptr, t, T, NC: tl.constexpr):
    """-> (pointer to row t of a (T, NC) table, 0.0 or NaN). An out-of-range t reads row
    0 and its coefficients become NaN: never a read outside the table."""
    ok = (t >= 0) & (t < T)
    return tab_ptr + tl.where(ok, t, 0) * NC, tl.where(ok, 0.0, float("nan"))


@triton.jit
def noise4(seed_ptr, b, p, g, t, stream, HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    """The normals of channels 4g .. 4g+3 at pixels p, drawn from the sample's seed; zeros
    (unused) when the kernel reads explicit noise instead."""
    n0 = tl.zeros([BLOCK], tl.float32)
    n1 = n0
    n2 = n0
    n3 = n0
    if not HAS_NOISE:
        n0, n1, n2, n3 = randn4(tl.load(seed_ptr + b), p, g, t, stream)
    return n0, n1, n2, n3
