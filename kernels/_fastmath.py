"""The three transcendentals of the words -> normals transform, per backend.

On the GPU they are the hardware approximations (`lg2.approx`, `sin.approx`, `cos.approx`,
one MUFU instruction each, through libdevice's fast_* entry points); `tl.sqrt` is already
`sqrt.approx`. The Triton interpreter cannot run PTX, so under it (and in the torch twin)
the same formula uses the precise functions. docs/noise.md bounds the difference.
"""

import triton
import triton.language as tl

from ._checks import INTERPRET

if INTERPRET:

    @triton.jit
    def log2(x):
        return tl.log2(x)

    @triton.jit
    def sin(x):
        return tl.sin(x)

    @triton.jit
    def cos(x):
        return tl.cos(x)

else:
    from triton.language.extra import libdevice

    @triton.jit
    def log2(x):
        return libdevice.fast_log2f(x)

    @triton.jit
    def sin(x):
        return libdevice.fast_sinf(x)

    @triton.jit
    def cos(x):
        return libdevice.fast_cosf(x)
